//! Operator controls of the real binary: `[[filter]]` rules drop exactly the records they name
//! (counted per reason, offsets committed past them, bad input still dead-lettered), and
//! `POST /admin/pause` / `/admin/resume` stop and restart consuming and writing while the
//! instance stays in its group.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{KAFKA, TestEnv, http_address, http_get, http_post, metric_sum, sigterm, wait_for};
use delivery_pipeline::produce::producer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

const RECORDS: usize = 3_000;
const PARTITIONS: i32 = 3;
const STATUSES: [&str; 4] = ["CREATED", "IN_TRANSIT", "DELIVERED", "TEST"];

const FILTERS: &str = r#"
[[filter]]
name = "qa"
pointer = "/meta/env"
equals = "qa"
action = "drop"

[[filter]]
name = "replayed"
header = "x-replay"
exists = true
action = "drop"

[[filter]]
name = "not_tracked"
pointer = "/status"
one_of = ["CREATED", "IN_TRANSIT", "DELIVERED"]
action = "keep"
"#;

/// What record `i` is: its payload, whether it carries the replay header, and what the rules
/// make of it (`Ok(event id)` stored, `Err(reason)` dropped, `Err("dead letter")`).
fn record(i: usize) -> (String, bool, Result<String, &'static str>) {
    let replay = i.is_multiple_of(7);
    if i % 500 == 499 {
        // Not JSON: the field rules do not apply; the header rule does.
        let fate = if replay { Err("replayed") } else { Err("dead letter") };
        return (format!("not json {i}"), replay, fate);
    }
    let (status, env) = (STATUSES[i % 4], if i.is_multiple_of(10) { "qa" } else { "prod" });
    let id = format!("f-{i}");
    let payload = format!(
        r#"{{"event_id":"{id}","tracking_id":"TRK{i}","status":"{status}","event_time":"2026-12-07T10:00:00Z","meta":{{"env":"{env}"}}}}"#
    );
    let fate = if env == "qa" {
        Err("qa")
    } else if replay {
        Err("replayed")
    } else if status == "TEST" {
        Err("not_tracked")
    } else {
        Ok(id)
    };
    (payload, replay, fate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_drop_exactly_what_they_name_count_it_per_reason_and_commit_past_it() {
    let env = TestEnv::new("filters");
    env.create_topic(PARTITIONS).await;
    let p = producer(KAFKA).expect("producer");
    let mut sends = Vec::new();
    let (mut kept, mut dropped, mut dead) = (BTreeSet::new(), BTreeMap::<&str, u64>::new(), 0u64);
    let mut ends = [0i64; PARTITIONS as usize];
    for i in 0..RECORDS {
        let (payload, replay, fate) = record(i);
        match fate {
            Ok(id) => {
                kept.insert(id);
            }
            Err("dead letter") => dead += 1,
            Err(reason) => *dropped.entry(reason).or_default() += 1,
        }
        let partition = (i % PARTITIONS as usize) as i32;
        ends[partition as usize] += 1;
        let mut r = FutureRecord::<str, str>::to(&env.topic).payload(&payload).partition(partition);
        if replay {
            r = r.headers(OwnedHeaders::new().insert(Header { key: "x-replay", value: Some("1") }));
        }
        sends.push(p.send_result(r).expect("enqueue"));
    }
    for s in sends {
        s.await.expect("delivery").expect("acked");
    }
    assert!(dropped.len() == 3 && kept.len() > 1000 && dead > 0, "every fate occurs: {dropped:?}");

    let config = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.toml", env.name));
    std::fs::write(&config, FILTERS).expect("write the config file");
    let mut child = env.spawn(&["--config", config.to_str().expect("UTF-8 path"), "run"], &[]);
    let log = env.log_path();
    wait_for("http endpoint", Duration::from_secs(30), || async { http_address(&log).is_some() }).await;
    let address = http_address(&log).expect("address");
    let filtered_total: u64 = dropped.values().sum();
    wait_for(
        &format!("every record stored, dropped or dead-lettered; log: {}", log.display()),
        Duration::from_secs(90),
        || async {
            let metrics = http_get(&address, "/metrics").map(|(_, text)| text).unwrap_or_default();
            metric_sum(&metrics, "dp_filtered_total") as u64 == filtered_total
                && env.rows_so_far().await == kept.len() as u64
                && env.dead_letters().await == dead
        },
    )
    .await;
    let metrics = http_get(&address, "/metrics").expect("metrics").1;
    for (reason, n) in &dropped {
        let line = format!("dp_filtered_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    // Admin endpoints are off without a token file.
    let (code, body) = http_post(&address, "/admin/pause", Some("anything")).expect("post");
    assert_eq!((code, body.contains("admin_token_file")), (404, true), "{body}");

    assert!(sigterm(&mut child, Duration::from_secs(25)).success());
    let stored: BTreeSet<String> = env.event_ids().await.into_iter().collect();
    assert_eq!(stored, kept, "exactly the records no rule dropped");
    assert_eq!(env.row_count().await, kept.len() as u64, "each once");
    assert_eq!(
        env.dead_letters().await,
        dead,
        "bad input is dead-lettered, never filtered away by a field rule"
    );
    let committed = env.committed(KAFKA, PARTITIONS);
    let ends: Vec<Option<i64>> = ends.iter().map(|&e| Some(e)).collect();
    assert_eq!(committed, ends, "offsets are committed past dropped records, to the end of each partition");
    assert!(env.redis_leftovers().await.is_empty(), "dropped records are never written ahead");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_consumes_and_writes_nothing_stays_in_its_group_and_resumes() {
    const TOKEN: &str = "s3cret-token-0123456789ab";
    let env = TestEnv::new("pause");
    env.create_topic(PARTITIONS).await;
    let token_file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.token", env.name));
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token file");
    let mut child =
        env.spawn(&["run"], &[("DP_HTTP__ADMIN_TOKEN_FILE", token_file.to_str().expect("UTF-8 path"))]);
    let log = env.log_path();
    wait_for("http endpoint", Duration::from_secs(30), || async { http_address(&log).is_some() }).await;
    let address = http_address(&log).expect("address");
    wait_for("ready", Duration::from_secs(30), || async {
        http_get(&address, "/readyz").is_ok_and(|(code, _)| code == 200)
    })
    .await;
    let mut produced = env.produce(2_000).await;
    wait_for("the first events stored", Duration::from_secs(60), || async {
        env.rows_so_far().await == 2_000
    })
    .await;

    for token in [None, Some("wrong"), Some("s3cret-token-0123456789aB"), Some("s3cret-token-0123456789ab0")]
    {
        let (code, _) = http_post(&address, "/admin/pause", token).expect("post");
        assert_eq!(code, 401, "token {token:?}");
    }
    assert_eq!(http_get(&address, "/readyz").expect("readyz").0, 200, "a refused request changes nothing");
    let (code, body) = http_post(&address, "/admin/pause", Some(TOKEN)).expect("pause");
    assert_eq!((code, body.starts_with("paused")), (200, true), "{body}");
    assert_eq!(http_post(&address, "/admin/pause", Some(TOKEN)).expect("pause").1, "already paused\n");
    let (code, body) = http_get(&address, "/readyz").expect("readyz");
    assert_eq!((code, body.contains("paused by an operator")), (503, true), "{body}");
    assert_eq!(http_get(&address, "/livez").expect("livez").0, 200, "alive while paused");

    let metrics = http_get(&address, "/metrics").expect("metrics").1;
    assert_eq!(metric_sum(&metrics, "dp_paused"), 1.0);
    let consumed = metric_sum(&metrics, "dp_messages_consumed_total");
    let rebalances = metric_sum(&metrics, "dp_kafka_rebalances_total");
    produced.extend(env.produce(3_000).await);
    // Longer than the session timeout (6 s) and many flush intervals (1 s).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let metrics = http_get(&address, "/metrics").expect("metrics").1;
    assert_eq!(env.rows_so_far().await, 2_000, "nothing written while paused");
    assert_eq!(metric_sum(&metrics, "dp_messages_consumed_total"), consumed, "nothing consumed while paused");
    assert_eq!(
        metric_sum(&metrics, "dp_kafka_rebalances_total"),
        rebalances,
        "still in the group: no rebalance"
    );

    let (code, body) = http_post(&address, "/admin/resume", Some(TOKEN)).expect("resume");
    assert_eq!((code, body.as_str()), (200, "resumed\n"));
    wait_for("the rest stored after resuming", Duration::from_secs(60), || async {
        env.rows_so_far().await == 5_000
    })
    .await;
    wait_for("ready again", Duration::from_secs(30), || async {
        http_get(&address, "/readyz").is_ok_and(|(code, _)| code == 200)
    })
    .await;
    assert_eq!(metric_sum(&http_get(&address, "/metrics").expect("metrics").1, "dp_paused"), 0.0);
    assert!(sigterm(&mut child, Duration::from_secs(25)).success());
    env.assert_stored_once(&produced.into_iter().collect()).await;
    env.drop_tables().await;
}

/// Under `after_buffer` the sink records exactly the offsets it stored: the offsets a filter
/// dropped are counted with the next kept record of their partition, so each partition's
/// stored ranges fold into one watermark at its end, with no gap left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_after_buffer_dropped_offsets_fold_into_the_watermark() {
    const TOTAL: usize = 1_001;
    let env = TestEnv::new("filters_ab");
    env.create_topic(2).await;
    let p = producer(KAFKA).expect("producer");
    let mut sends = Vec::new();
    let (mut ends, mut kept) = ([0i64; 2], 0u64);
    for i in 0..TOTAL {
        // Every third record from the third on is dropped, and each partition's first record
        // (which follows nothing read before it); each partition's last record is kept.
        let drop = i % 3 == 2 || i < 2;
        kept += u64::from(!drop);
        let payload = format!(
            r#"{{"event_id":"ab-{i}","tracking_id":"TRK{i}","status":"S","event_time":"2026-12-07T10:00:00Z","drop":{drop}}}"#
        );
        let partition = (i % 2) as i32;
        ends[partition as usize] += 1;
        sends.push(
            p.send_result(FutureRecord::<str, str>::to(&env.topic).payload(&payload).partition(partition))
                .expect("enqueue"),
        );
    }
    for s in sends {
        s.await.expect("delivery").expect("acked");
    }
    let config = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.toml", env.name));
    std::fs::write(
        &config,
        "[[filter]]\nname = \"marked\"\npointer = \"/drop\"\nequals = true\naction = \"drop\"\n",
    )
    .expect("write the config file");
    let mut child = env.spawn(
        &["--config", config.to_str().expect("UTF-8 path"), "run"],
        &[("DP_COMMIT_POLICY", "after_buffer"), ("DP_ALLOW_VOLATILE_BUFFER", "true")],
    );
    wait_for(
        &format!("the kept records stored; log: {}", env.log_path().display()),
        Duration::from_secs(60),
        || async { env.rows_so_far().await == kept },
    )
    .await;
    assert!(sigterm(&mut child, Duration::from_secs(25)).success());
    let marks = env.watermarks().await;
    assert_eq!(marks, BTreeMap::from([(0, ends[0]), (1, ends[1])]), "each watermark at its partition's end");
    let gaps = env
        .scalar(&format!(
            "SELECT COUNT(*) FROM pipeline_offsets WHERE consumer_group = '{}' AND stored_ranges IS NOT NULL AND stored_ranges <> ''",
            env.group
        ))
        .await;
    assert_eq!(gaps, 0, "no range left above a watermark");
    assert_eq!(env.row_count().await, kept);
    env.drop_tables().await;
}
