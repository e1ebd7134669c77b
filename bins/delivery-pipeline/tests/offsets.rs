//! `delivery-pipeline offsets show|reset` against the real broker and MariaDB: a period whose
//! rows were deleted is re-ingested by resetting the group to a time, which moves Kafka's
//! committed offsets and the watermark together; a reset is refused while an instance runs.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use common::{TestEnv, as_set, sigterm, wait_for};
use fred::prelude::*;
use mysql_async::prelude::Queryable;

const PARTITIONS: i32 = 2;

/// Runs the binary with this test's settings.
fn cli(env: &TestEnv, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_delivery-pipeline"));
    cmd.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env.env() {
        cmd.env(k, v);
    }
    cmd.output().expect("run delivery-pipeline")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `offsets show --json`: per partition, (committed, watermark).
///
/// The log end it also prints is the broker's answer to ListOffsets, which tansu (the test
/// broker) gets wrong for a partition whose last produce request held several records (it
/// answers the last request's base offset + 1); the test therefore counts what it produced.
fn show(env: &TestEnv) -> BTreeMap<i32, (Option<i64>, Option<i64>)> {
    let o = cli(env, &["offsets", "show", "--json"]);
    assert!(o.status.success(), "offsets show failed:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let p = v["partition"].as_i64().expect("partition") as i32;
            (p, (v["committed"].as_i64(), v["watermark"].as_i64()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_period_is_reingested_by_resetting_the_group_to_a_time() {
    let env = TestEnv::new("offsets");
    env.create_topic(PARTITIONS).await;
    let before = env.produce(600).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cut = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format the time");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let period = env.produce(400).await;

    let mut child = env.spawn(&["run"], &[]);
    wait_for("every event stored", Duration::from_secs(60), || async { env.rows_so_far().await == 1_000 })
        .await;
    let o = cli(&env, &["offsets", "reset", "--to", &cut]);
    assert!(!o.status.success(), "a reset while an instance runs is refused:\n{}", text(&o));
    assert!(text(&o).contains("live member"), "{}", text(&o));
    assert!(sigterm(&mut child, Duration::from_secs(25)).success());

    let settled = show(&env);
    assert_eq!(settled.len(), PARTITIONS as usize);
    for (p, (committed, watermark)) in &settled {
        assert!(committed.is_some() && committed == watermark, "partition {p} settled: {settled:?}");
    }
    let ends: i64 = settled.values().filter_map(|s| s.0).sum();
    assert_eq!(ends, 1_000, "every partition committed to its end: {settled:?}");
    let table = cli(&env, &["offsets", "show"]);
    assert!(table.status.success() && text(&table).contains("total lag"), "{}", text(&table));

    // The period's rows are lost from MySQL (a bad migration, say).
    let mut c = env.mysql().await;
    let ids = period.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",");
    c.query_drop(format!("DELETE FROM `{}` WHERE event_id IN ({ids})", env.table)).await.expect("delete");
    assert_eq!(env.row_count().await, 600);

    // A killed instance's record left in Redis would be written, and raise the watermark past
    // the reset, at the next start: the reset is refused while Redis holds one.
    let redis = env.redis().await;
    let leftover = format!("{}:buffer:killed-pod:0193a5b0-7c1e-7d2a-9f3b-1c2d3e4f5a6b", env.key_prefix);
    let () = redis.set(&leftover, "x", None, None, false).await.expect("set a leftover key");
    let refused = cli(&env, &["offsets", "reset", "--to", &cut]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("redis holds 1 buffered record"), "{}", text(&refused));
    assert_eq!(show(&env), settled, "a refused reset changes nothing");
    let _: i64 = redis.del(&leftover).await.expect("delete the leftover key");

    let dry = cli(&env, &["offsets", "reset", "--to", &cut, "--dry-run"]);
    assert!(dry.status.success() && text(&dry).contains("dry run"), "{}", text(&dry));
    assert_eq!(show(&env), settled, "a dry run changes nothing");

    let reset = cli(&env, &["offsets", "reset", "--to", &cut]);
    assert!(reset.status.success(), "{}", text(&reset));
    assert!(text(&reset).contains("committed offsets and watermarks moved"), "{}", text(&reset));
    let rewound = show(&env);
    let mut reread = 0;
    for (p, (committed, watermark)) in &rewound {
        let committed = committed.expect("committed");
        assert_eq!(Some(committed), *watermark, "partition {p}: both moved to the same offset");
        reread += settled[p].0.expect("committed") - committed;
    }
    assert_eq!(reread, 400, "exactly the period after the cut is ahead of the group: {rewound:?}");

    let mut child = env.spawn(&["run"], &[]);
    wait_for("the period stored again", Duration::from_secs(60), || async {
        env.rows_so_far().await == 1_000
    })
    .await;
    assert!(sigterm(&mut child, Duration::from_secs(25)).success());
    let mut all = as_set(before);
    all.extend(period);
    env.assert_stored_once(&all).await;
    assert_eq!(show(&env), settled, "back at the end of each partition");
    env.drop_tables().await;
}
