//! `delivery-pipeline dlq list|replay` against real dead-letter entries made by the running
//! binary: list and filter them, fix one payload in place, replay (stored once, entry removed;
//! the other still refused, its attempts counted), replay again (nothing stored twice).

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{KAFKA, TestEnv, sigterm, wait_for};
use mysql_async::prelude::Queryable;
use rdkafka::producer::FutureRecord;

fn cli(env: &TestEnv, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_delivery-pipeline"));
    cmd.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env.env() {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run delivery-pipeline");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_fixed_in_place_and_replayed_idempotently() {
    let env = TestEnv::new("dlq_cli");
    env.create_topic(1).await;
    let producer = delivery_pipeline::produce::producer(KAFKA).expect("producer");
    let long = format!(r#"{{"event_id":"too-long","tracking_id":"{}"}}"#, "x".repeat(65));
    let messages = [
        r#"{"event_id":"ok-1","status":"CREATED"}"#.to_string(),
        r#"{"event_id":"broken", "status": "CREATED""#.to_string(),
        long,
        r#"{"event_id":"ok-2","status":"DELIVERED"}"#.to_string(),
    ];
    for m in &messages {
        producer
            .send(FutureRecord::<str, str>::to(&env.topic).key("k").payload(m), Duration::from_secs(10))
            .await
            .expect("send");
    }
    let mut child = env.spawn(&["run"], &[]);
    let dead_table = format!("{}_dead_letter", env.table);
    wait_for("rows and dead letters", Duration::from_secs(60), || async {
        env.rows_so_far().await == 2 && env.scalar(&format!("SELECT COUNT(*) FROM `{dead_table}`")).await == 2
    })
    .await;
    assert!(sigterm(&mut child, Duration::from_secs(25)).success());

    let table = stdout(&cli(&env, &["dlq", "list"]));
    assert!(table.contains("invalid_json") && table.contains("field_too_long"), "{table}");
    assert!(table.contains(&format!("{}/0@1", env.topic)), "coordinates shown: {table}");
    assert!(table.trim_end().ends_with("2 entries"), "{table}");
    let json = stdout(&cli(&env, &["dlq", "list", "--json", "--class", "invalid_json"]));
    let entries: Vec<serde_json::Value> =
        json.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["offset"], 1);
    assert_eq!(entries[0]["attempts"], 1);
    assert!(stdout(&cli(&env, &["dlq", "list", "--since", "1h"])).contains("2 entries"));
    assert!(stdout(&cli(&env, &["dlq", "list", "--since", "2999-01-01T00:00:00Z"])).contains("0 entries"));

    // An operator fixes the broken payload in place.
    let mut c = env.mysql().await;
    c.exec_drop(
        format!("UPDATE `{dead_table}` SET `payload` = ? WHERE `error_class` = 'invalid_json'"),
        (r#"{"event_id":"broken","status":"CREATED"}"#,),
    )
    .await
    .expect("fix payload");

    let first = stdout(&cli(&env, &["dlq", "replay"]));
    assert!(
        first.contains("replayed 2 dead-letter entries: 1 stored as new rows, 0 already stored"),
        "{first}"
    );
    assert!(first.contains("1 still refused"), "{first}");
    let second = stdout(&cli(&env, &["dlq", "replay"]));
    assert!(second.contains("replayed 1 dead-letter entries: 0 stored as new rows"), "{second}");
    assert!(second.contains("1 still refused"), "{second}");

    assert_eq!(env.row_count().await, 3, "ok-1, ok-2 and the fixed one, once each");
    let left: Vec<(String, u32, i64)> = c
        .query(format!("SELECT error_class, attempts, kafka_offset FROM `{dead_table}`"))
        .await
        .expect("entries");
    assert_eq!(left, vec![("field_too_long".to_string(), 3, 2)], "refused twice more, counted");
    let fixed: Option<String> = c
        .exec_first(format!("SELECT status FROM `{}` WHERE event_id = 'broken'", env.table), ())
        .await
        .expect("fixed row");
    assert_eq!(fixed.as_deref(), Some("CREATED"));
    drop(c);
    env.drop_tables().await;
}

/// Reads every message of `topic` from the start (a fresh group), until `count` arrived.
fn consume_all(topic: &str, count: usize) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::Message;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", format!("reader-{}", uuid::Uuid::now_v7().as_simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while out.len() < count && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
            out.push(m.detach());
        }
    }
    out.sort_by_key(|m| m.offset());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_go_to_a_kafka_topic_with_the_original_bytes_and_the_reason_in_headers() {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    let env = TestEnv::new("dlq_kafka");
    env.create_topic(1).await;
    let producer = delivery_pipeline::produce::producer(KAFKA).expect("producer");
    let not_utf8: Vec<u8> = b"{\"event_id\":\"\xff\xfe\"}".to_vec();
    let long = format!(r#"{{"event_id":"too-long","tracking_id":"{}"}}"#, "x".repeat(65)).into_bytes();
    // offset 0 ok, 1 not UTF-8, 2 too long, 3 tombstone, 4 ok
    let send = |payload: Option<Vec<u8>>| {
        let producer = producer.clone();
        let topic = env.topic.clone();
        async move {
            let mut r = FutureRecord::<str, [u8]>::to(&topic).key("k");
            if let Some(p) = payload.as_deref() {
                r = r.payload(p);
            }
            producer.send(r, Duration::from_secs(10)).await.expect("send");
        }
    };
    send(Some(br#"{"event_id":"ok-1"}"#.to_vec())).await;
    send(Some(not_utf8.clone())).await;
    send(Some(long.clone())).await;
    send(None).await;
    send(Some(br#"{"event_id":"ok-2"}"#.to_vec())).await;

    let mut child =
        env.spawn(&["run"], &[("DP_DEAD_LETTER__KAFKA", "true"), ("DP_DEAD_LETTER__MYSQL", "false")]);
    wait_for("rows", Duration::from_secs(60), || async { env.rows_so_far().await == 2 }).await;
    let dlq_topic = format!("{}.dlq", env.topic);
    let dead = consume_all(&dlq_topic, 3);
    assert!(sigterm(&mut child, Duration::from_secs(25)).success());
    assert!(common::log_count(&env.log_path(), "created the dead-letter topic") == 1);

    let dead_table = format!("{}_dead_letter", env.table);
    assert_eq!(env.scalar(&format!("SELECT COUNT(*) FROM `{dead_table}`")).await, 0, "mysql = false");
    assert_eq!(dead.len(), 3, "three dead letters published");
    let header = |m: &rdkafka::message::OwnedMessage, name: &str| -> Option<String> {
        m.headers()?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let expected: [(i64, Option<&[u8]>); 3] =
        [(1, Some(not_utf8.as_slice())), (2, Some(long.as_slice())), (3, None)];
    for (m, (offset, payload)) in dead.iter().zip(expected) {
        assert_eq!(m.payload(), payload, "original bytes, unchanged (offset {offset})");
        assert_eq!(m.key(), Some(&b"k"[..]), "original key");
        assert_eq!(header(m, "dp.original.topic").as_deref(), Some(env.topic.as_str()));
        assert_eq!(header(m, "dp.original.partition").as_deref(), Some("0"));
        assert_eq!(header(m, "dp.original.offset"), Some(offset.to_string()));
        assert!(header(m, "dp.original.timestamp").is_some());
        assert!(header(m, "dp.error.reason").is_some_and(|r| !r.is_empty()));
        assert!(header(m, "dp.failed.at").is_some());
    }
    let classes: Vec<String> = dead.iter().filter_map(|m| header(m, "dp.error.class")).collect();
    assert_eq!(classes, ["not_utf8", "field_too_long", "null_value"]);
    env.drop_tables().await;
}
