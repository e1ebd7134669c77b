//! Tombstones as deletes, end to end: keyed topics where each shipment is created, updated,
//! deleted and created again — some deletes late, older than the row they meet — go through
//! Kafka into a hard-delete table and a soft-delete table, in small batches. Both tables must
//! end exactly where applying every record one by one in offset order leaves them.

mod common;

use std::collections::BTreeMap;

use common::{KAFKA, TestEnv};
use delivery_pipeline::produce::{ensure_topic, producer};
use mysql_async::prelude::Queryable;
use rdkafka::producer::FutureRecord;

const SHIPMENTS: u64 = 120;
const STEPS: u64 = 10;
const EVENTS: u64 = 300;
/// 2026-11-24T10:00:00Z in milliseconds.
const BASE_MS: i64 = 1_795_514_400_000;

/// One record of a shipment's script: an upsert at `minute`, or a tombstone produced at
/// `minute`.
#[derive(Clone, Copy, Debug)]
enum Step {
    Upsert { minute: i64 },
    Delete { minute: i64 },
}

/// The script of shipment `s`: mostly upserts and deletes in time order, with some late
/// records (older than the one before), from a fixed pseudo-random sequence.
fn script(s: u64) -> Vec<Step> {
    let mut x = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    let mut next = move || {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) % 100
    };
    (0..STEPS)
        .map(|step| {
            let late = next() < 20;
            let minute = (step as i64) * 5 + 8 - if late { 7 } else { 0 };
            if next() < 35 { Step::Delete { minute } } else { Step::Upsert { minute } }
        })
        .collect()
}

/// A row of the hard-delete table: (status, minute); of the soft-delete one, also the mark.
type Hard = BTreeMap<String, (String, i64)>;
type Soft = BTreeMap<String, (String, i64, Option<i64>)>;

/// Applies every shipment's script one record at a time, as the guarded upsert and delete
/// statements do: an upsert inserts, or updates a row whose guard is older; a delete removes
/// (or marks, once) a row whose guard is not newer than the tombstone. Returns both tables and
/// the deletes that applied.
fn one_by_one() -> (Hard, Soft, u64) {
    let (mut hard, mut soft, mut deleted) = (Hard::new(), Soft::new(), 0);
    for s in 0..SHIPMENTS {
        let tracking = format!("TRK{s:04}");
        for (i, step) in script(s).into_iter().enumerate() {
            let status = format!("S{i}");
            match step {
                Step::Upsert { minute } => {
                    match hard.get(&tracking) {
                        Some((_, g)) if *g >= minute => {}
                        _ => {
                            hard.insert(tracking.clone(), (status.clone(), minute));
                        }
                    }
                    match soft.get(&tracking) {
                        Some((_, g, _)) if *g >= minute => {}
                        _ => {
                            soft.insert(tracking.clone(), (status, minute, None));
                        }
                    }
                }
                Step::Delete { minute } => {
                    if hard.get(&tracking).is_some_and(|(_, g)| *g <= minute) {
                        hard.remove(&tracking);
                        deleted += 1;
                    }
                    if let Some((_, g, mark @ None)) = soft.get_mut(&tracking)
                        && *g <= minute
                    {
                        *mark = Some(minute);
                        deleted += 1;
                    }
                }
            }
        }
    }
    (hard, soft, deleted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_delete_and_soft_delete_exactly_as_offset_order_would_through_small_batches() {
    let env = TestEnv::new("deletes");
    let (hard_topic, soft_topic) = (format!("{}-hard", env.topic), format!("{}-soft", env.topic));
    let (hard_table, soft_table) = (format!("{}_hard", env.table), format!("{}_soft", env.table));
    env.create_topic(2).await;
    ensure_topic(KAFKA, &hard_topic, 3).await.expect("hard topic");
    ensure_topic(KAFKA, &soft_topic, 3).await.expect("soft topic");

    // Step by step, each step acknowledged before the next, so each key's records are in
    // script order in its partition.
    let p = producer(KAFKA).expect("producer");
    let scripts: Vec<Vec<Step>> = (0..SHIPMENTS).map(script).collect();
    let mut tombstones = 0;
    for step in 0..STEPS as usize {
        let mut sends = Vec::new();
        for (s, script) in scripts.iter().enumerate() {
            let tracking = format!("TRK{s:04}");
            for topic in [&hard_topic, &soft_topic] {
                let record = FutureRecord::<str, str>::to(topic).key(&tracking);
                let record = match script[step] {
                    Step::Upsert { minute } => {
                        let payload = format!(
                            r#"{{"tracking_id":"{tracking}","status":"S{step}","event_time":"2026-11-24T10:{minute:02}:00Z"}}"#
                        );
                        sends.push(
                            p.send_result(record.payload(&payload).timestamp(BASE_MS + minute * 60_000))
                                .expect("enqueue"),
                        );
                        continue;
                    }
                    Step::Delete { minute } => {
                        tombstones += 1;
                        record.timestamp(BASE_MS + minute * 60_000)
                    }
                };
                sends.push(p.send_result(record).expect("enqueue"));
            }
        }
        for s in sends {
            s.await.expect("delivery").expect("acked");
        }
    }
    // A tombstone without a key names no row; one on the event table (no deletes there)
    // stays a dead letter as before.
    p.send_result(FutureRecord::<str, str>::to(&hard_topic).partition(0))
        .expect("enqueue")
        .await
        .expect("d")
        .expect("acked");
    p.send_result(FutureRecord::<str, str>::to(&env.topic).key("k").partition(0))
        .expect("enqueue")
        .await
        .expect("d")
        .expect("acked");
    env.produce(EVENTS).await;
    let (hard_expected, soft_expected, deletes_expected) = one_by_one();
    assert!(
        tombstones > 0 && deletes_expected > 0 && deletes_expected < tombstones,
        "the script has deletes that apply and some that do not"
    );
    assert!(!hard_expected.is_empty() && hard_expected.len() < SHIPMENTS as usize);

    let mut config = env.config();
    config.kafka.topics.extend([hard_topic.clone(), soft_topic.clone()]);
    let columns = r#"
        columns = [
          { name = "tracking_id", pointer = "/tracking_id", type = "string", max_length = 32, required = true },
          { name = "status", pointer = "/status", type = "string", max_length = 16 },
          { name = "event_time", pointer = "/event_time", type = "timestamp", required = true },
        ]"#;
    let routes: toml::Table = toml::from_str(&format!(
        r#"
        [[routes]]
        topic = "{hard_topic}"
        table = "{hard_table}"
        {columns}
        write = {{ mode = "upsert", key = ["tracking_id"], guard = "event_time", delete = "tombstone" }}

        [[routes]]
        topic = "{soft_topic}"
        table = "{soft_table}"
        {columns}
        write = {{ mode = "upsert", key = ["tracking_id"], guard = "event_time", delete = "tombstone", soft_delete_column = "deleted_at" }}
        "#
    ))
    .expect("toml");
    config.mysql.routes = routes["routes"].clone().try_into().expect("routes");
    // Small batches: a shipment's records are spread over many transactions, and a batch
    // (about five steps of a partition) holds several records of many keys.
    config.buffer.max_rows = 200;
    let mut c = env.mysql().await;
    for t in [&hard_table, &soft_table] {
        c.query_drop(format!("DROP TABLE IF EXISTS `{t}`")).await.expect("drop");
    }

    let total = EVENTS + 1 + 2 * SHIPMENTS * STEPS + 1;
    let summary = common::run_until_delivered(&config, total).await;

    let hard: Vec<(String, String, i64)> = c
        .query(format!(
            "SELECT tracking_id, status, MINUTE(event_time) FROM `{hard_table}` ORDER BY tracking_id"
        ))
        .await
        .expect("hard rows");
    let hard: Hard = hard.into_iter().map(|(t, s, m)| (t, (s, m))).collect();
    assert_eq!(hard, hard_expected, "the hard-delete table");
    let soft: Vec<(String, String, i64, Option<i64>)> = c
        .query(format!(
            "SELECT tracking_id, status, MINUTE(event_time), MINUTE(deleted_at) FROM `{soft_table}` ORDER BY tracking_id"
        ))
        .await
        .expect("soft rows");
    let soft: Soft = soft.into_iter().map(|(t, s, m, d)| (t, (s, m, d))).collect();
    assert_eq!(soft, soft_expected, "the soft-delete table");
    let marked = soft_expected.values().filter(|(_, _, d)| d.is_some()).count();
    assert!(marked > 0, "some rows end soft-deleted");

    let s = summary.stats;
    assert_eq!(s.deleted, deletes_expected, "every delete that applied, counted once: {s:?}");
    assert_eq!(s.dead_lettered, 2, "{s:?}");
    assert_eq!(env.row_count().await, EVENTS, "the event table");
    let classes: Vec<String> = c
        .query(format!("SELECT error_class FROM `{}_dead_letter` ORDER BY error_class", env.table))
        .await
        .expect("dead letters");
    assert_eq!(classes, ["invalid_key", "null_value"]);
    assert_eq!(env.redis_keys().await, 0);
    eprintln!(
        "deletes: {} records, {tombstones} tombstones, {deletes_expected} deletes applied, {} rows hard, {} soft ({marked} marked); {s:?}",
        total,
        hard_expected.len(),
        soft_expected.len()
    );
}
