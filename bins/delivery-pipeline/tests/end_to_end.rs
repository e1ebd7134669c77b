//! Kafka → memory + Redis → MySQL, in process, against the real services.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestEnv, as_set};
use dp_pipeline::{PipelineStats, RunSummary};
use mysql_async::prelude::Queryable;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

/// Runs the pipeline until `stop` holds for its counters, then shuts it down cleanly.
async fn run_until(
    env: &TestEnv,
    stop: impl Fn(&dp_pipeline::StatsSnapshot) -> bool + Send + 'static,
) -> RunSummary {
    let pipeline = dp_assembly::build(&env.config()).await.expect("build pipeline");
    let stats: Arc<PipelineStats> = pipeline.stats();
    let shutdown = async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !stop(&stats.snapshot()) {
            assert!(
                std::time::Instant::now() < deadline,
                "pipeline made no progress: {:?}",
                stats.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    pipeline.run(shutdown).await.expect("clean run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_events_become_exactly_twenty_thousand_rows() {
    let env = TestEnv::new("e2e_20k");
    env.create_topic(4).await;
    let produced = as_set(env.produce(20_000).await);
    assert_eq!(produced.len(), 20_000);

    let summary = run_until(&env, |s| s.delivered() >= 20_000).await;
    assert_eq!(summary.stats.inserted, 20_000);
    assert_eq!(summary.stats.dead_lettered, 0);

    assert_eq!(env.row_count().await, 20_000);
    assert_eq!(as_set(env.event_ids().await), produced, "exactly the produced event ids, each once");
    // Every mapped column matches the payload it came from.
    let t = &env.table;
    let consistent = env
        .scalar(&format!(
            "SELECT COUNT(*) FROM `{t}` WHERE \
             tracking_id = JSON_VALUE(payload, '$.tracking_id') AND \
             status = JSON_VALUE(payload, '$.status') AND \
             event_id = JSON_VALUE(payload, '$.event_id') AND \
             DATE_FORMAT(event_time, '%Y-%m-%dT%H:%i:%s.%fZ') LIKE CONCAT(LEFT(JSON_VALUE(payload, '$.event_time'), 23), '%') AND \
             kafka_topic = '{topic}' AND kafka_partition BETWEEN 0 AND 3 AND kafka_timestamp IS NOT NULL",
            topic = env.topic
        ))
        .await;
    assert_eq!(consistent, 20_000, "columns must be extracted from each payload");
    // Each partition's offsets are all there, once: 0..n with no gap.
    let mut c = env.mysql().await;
    let per_partition: Vec<(i32, u64, i64, i64)> = c
        .query(format!(
            "SELECT kafka_partition, COUNT(*), MIN(kafka_offset), MAX(kafka_offset) FROM `{t}` GROUP BY kafka_partition"
        ))
        .await
        .expect("per partition");
    assert_eq!(per_partition.len(), 4, "keys spread over all 4 partitions");
    for (p, n, min, max) in per_partition {
        assert_eq!((min, max), (0, n as i64 - 1), "partition {p}: offsets must be 0..{n} without gaps");
    }
    assert_eq!(env.redis_keys().await, 0, "no write-ahead keys left");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_duplicate_leaves_one_row() {
    let env = TestEnv::new("e2e_dup");
    env.create_topic(2).await;
    let producer = delivery_pipeline::produce::producer(common::KAFKA).expect("producer");
    let mut ids = Vec::new();
    for i in 0..10 {
        let id = uuid::Uuid::now_v7().to_string();
        let payload = format!(r#"{{"event_id":"{id}","tracking_id":"TRK{i}","status":"IN_TRANSIT"}}"#);
        let copies = if i < 3 { 2 } else { 1 }; // the producer sends three of them twice
        for _ in 0..copies {
            producer
                .send(
                    FutureRecord::to(&env.topic).key(&format!("TRK{i}")).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .expect("send");
        }
        ids.push(id);
    }
    let summary = run_until(&env, |s| s.delivered() >= 13).await;
    assert_eq!(summary.stats.inserted, 10);
    assert_eq!(summary.stats.duplicates, 3);
    assert_eq!(env.row_count().await, 10);
    assert_eq!(as_set(env.event_ids().await), as_set(ids));
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_and_valid_neighbours_stored() {
    let env = TestEnv::new("e2e_dlq");
    env.create_topic(1).await;
    let producer = delivery_pipeline::produce::producer(common::KAFKA).expect("producer");
    let valid = |n: u32| {
        format!(r#"{{"event_id":"ok-{n}","tracking_id":"TRK{n}","status":"DELIVERED"}}"#).into_bytes()
    };
    let long_tracking =
        format!(r#"{{"event_id":"bad-long","tracking_id":"{}"}}"#, "x".repeat(65)).into_bytes();
    // (payload, expected dead-letter class); None payload is a tombstone.
    let messages: Vec<(Option<Vec<u8>>, Option<&str>)> = vec![
        (Some(valid(1)), None),
        (Some(b"this is not json".to_vec()), Some("invalid_json")),
        (Some(valid(2)), None),
        (Some(vec![0xff, 0xfe, 0x00, 0x7b]), Some("not_utf8")),
        (None, Some("null_value")),
        (Some(Vec::new()), Some("empty_value")),
        (Some(b"[1,2,3]".to_vec()), Some("not_an_object")),
        (Some(br#"{"event_id":"bad-type","status":5}"#.to_vec()), Some("invalid_field")),
        (Some(long_tracking), Some("field_too_long")),
        (Some(br#"{"event_id":"bad-time","event_time":"yesterday"}"#.to_vec()), Some("invalid_timestamp")),
        (Some(valid(3)), None),
    ];
    for (payload, _) in &messages {
        let headers = OwnedHeaders::new().insert(Header { key: "binary", value: Some(&[0xc3u8, 0x28][..]) });
        let mut rec = FutureRecord::<str, [u8]>::to(&env.topic).key("k").headers(headers);
        if let Some(p) = payload {
            rec = rec.payload(p.as_slice());
        }
        producer.send(rec, Duration::from_secs(10)).await.expect("send");
    }
    let total = messages.len() as u64;
    let summary = run_until(&env, move |s| s.delivered() >= total).await;
    assert_eq!(summary.stats.inserted, 3);
    assert_eq!(summary.stats.dead_lettered, 8);

    assert_eq!(as_set(env.event_ids().await), as_set(vec!["ok-1".into(), "ok-2".into(), "ok-3".into()]));
    let mut c = env.mysql().await;
    let dead: Vec<(i64, String, Option<Vec<u8>>, String)> = c
        .query(format!(
            "SELECT kafka_offset, error_class, payload, reason FROM `{}_dead_letter` ORDER BY kafka_offset",
            env.table
        ))
        .await
        .expect("dead letters");
    let expected: Vec<(i64, &str)> =
        messages.iter().enumerate().filter_map(|(i, (_, class))| class.map(|c| (i as i64, c))).collect();
    assert_eq!(dead.iter().map(|(o, c, _, _)| (*o, c.as_str())).collect::<Vec<_>>(), expected);
    for (offset, _, payload, reason) in &dead {
        assert_eq!(payload, &messages[*offset as usize].0, "offset {offset}: original bytes kept exactly");
        assert!(!reason.is_empty());
    }
    // The whole record, headers included, is kept for replay.
    let record: Option<Vec<u8>> = c
        .query_first(format!("SELECT record FROM `{}_dead_letter` WHERE kafka_offset = 3", env.table))
        .await
        .expect("record");
    let record = dp_core::decode_record(&record.expect("row")).expect("decodes");
    assert_eq!(record.headers[0].value.as_deref(), Some(&[0xc3u8, 0x28][..]), "non-UTF-8 header kept");
    assert_eq!(env.redis_keys().await, 0);
    env.drop_tables().await;
}
