//! Two topics in one consumer group, each to its own table: the event log with the built-in
//! columns, and the latest status per shipment through declared columns and a guarded upsert,
//! with status scans arriving out of order across partitions.

mod common;

use std::collections::BTreeMap;

use common::{KAFKA, TestEnv};
use delivery_pipeline::produce::{ensure_topic, producer};
use mysql_async::prelude::Queryable;
use rdkafka::producer::FutureRecord;

const EVENTS: u64 = 3_000;
const SHIPMENTS: u64 = 40;
const SCANS_PER_SHIPMENT: u64 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_topics_go_to_two_tables_and_the_status_table_ends_at_each_newest_scan() {
    let env = TestEnv::new("routing");
    let status_topic = format!("{}-status", env.topic);
    let status_table = format!("{}_status", env.table);
    env.create_topic(2).await;
    ensure_topic(KAFKA, &status_topic, 3).await.expect("status topic");

    // Each shipment's scans go to a partition chosen by scan, not by shipment, and in a
    // shuffled order: a consumer sees many of them out of time order.
    let p = producer(KAFKA).expect("producer");
    let mut newest: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut sends = Vec::new();
    for scan in 0..SCANS_PER_SHIPMENT {
        for s in 0..SHIPMENTS {
            let minute = (scan * 7 + s * 3) % SCANS_PER_SHIPMENT; // a permutation of 0..12 per shipment
            let tracking = format!("TRK{s:04}");
            let status = format!("S{minute:02}");
            let payload = format!(
                r#"{{"tracking_id":"{tracking}","status":"{status}","event_time":"2026-11-24T10:{minute:02}:00Z","carrier":{{"code":"DHL"}}}}"#
            );
            let e = newest.entry(tracking.clone()).or_insert((0, String::new()));
            if minute >= e.0 {
                *e = (minute, status.clone());
            }
            let partition = ((scan + s) % 3) as i32;
            let record = FutureRecord::<str, str>::to(&status_topic).payload(&payload).partition(partition);
            sends.push(p.send_result(record).expect("enqueue"));
        }
    }
    for s in sends {
        s.await.expect("delivery").expect("acked");
    }
    env.produce(EVENTS).await;

    let mut config = env.config();
    config.kafka.topics.push(status_topic.clone());
    let routes: toml::Table = toml::from_str(&format!(
        r#"
        [[routes]]
        topic = "{status_topic}"
        table = "{status_table}"
        columns = [
          {{ name = "tracking_id", pointer = "/tracking_id", type = "string", max_length = 32, required = true }},
          {{ name = "status", pointer = "/status", type = "string", max_length = 16 }},
          {{ name = "event_time", pointer = "/event_time", type = "timestamp", required = true }},
          {{ name = "carrier", pointer = "/carrier/code", type = "string", max_length = 8 }},
          {{ name = "kafka_partition", computed = "kafka_partition" }},
          {{ name = "kafka_offset", computed = "kafka_offset" }},
        ]
        write = {{ mode = "upsert", key = ["tracking_id"], guard = "event_time" }}
        "#
    ))
    .expect("toml");
    config.mysql.routes = routes["routes"].clone().try_into().expect("routes");
    // Small batches, so a shipment's scans are spread over many transactions.
    config.buffer.max_rows = 100;
    let mut c = env.mysql().await;
    c.query_drop(format!("DROP TABLE IF EXISTS `{status_table}`")).await.expect("drop");

    let total = EVENTS + SHIPMENTS * SCANS_PER_SHIPMENT;
    let summary = common::run_until_delivered(&config, total).await;

    assert_eq!(env.row_count().await, EVENTS, "the event topic, in the default table");
    let rows: Vec<(String, String, String, String)> = c
        .query(format!(
            "SELECT tracking_id, status, DATE_FORMAT(event_time, '%i'), carrier FROM `{status_table}` ORDER BY tracking_id"
        ))
        .await
        .expect("status rows");
    assert_eq!(rows.len() as u64, SHIPMENTS, "one row per shipment");
    for (tracking, status, minute, carrier) in rows {
        let (want_minute, want_status) = &newest[&tracking];
        assert_eq!(
            (status.as_str(), minute.parse::<u64>().expect("minute"), carrier.as_str()),
            (want_status.as_str(), *want_minute, "DHL"),
            "{tracking} must end at its newest scan"
        );
    }
    let s = summary.stats;
    assert_eq!(s.dead_lettered, 0);
    assert_eq!(s.inserted, EVENTS + SHIPMENTS, "every event row and the first scan of each shipment");
    assert!(s.updated >= SHIPMENTS, "later, newer scans update: {s:?}");
    assert_eq!(s.inserted + s.updated + s.duplicates, total, "every record accounted for");
    assert!(s.duplicates > 0, "late scans change nothing and count as duplicates: {s:?}");
    assert_eq!(env.redis_keys().await, 0);
}
