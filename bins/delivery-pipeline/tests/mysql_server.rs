//! The real binary through Kafka into Oracle MySQL (`scripts/mysql.sh start`, 127.0.0.1:3307)
//! instead of MariaDB: the event log and a routed, guarded upsert (MySQL's row-alias statements)
//! end to end, and SIGKILLs during a backlog on a table without the unique key, where only the
//! offset watermark — written with MySQL's statements — stands between a replay and a duplicate.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{KAFKA, as_set, mysql, sigkill, sigterm, wait_for};
use delivery_pipeline::produce::{ensure_topic, producer};
use mysql_async::prelude::Queryable;
use rand::Rng;
use rdkafka::producer::FutureRecord;

const SHIPMENTS: u64 = 30;
const SCANS_PER_SHIPMENT: u64 = 8;

/// Sends every shipment's scans, out of time order and spread over 3 partitions; returns each
/// shipment's newest (minute, status).
async fn produce_scans(topic: &str) -> BTreeMap<String, (u64, String)> {
    ensure_topic(KAFKA, topic, 3).await.expect("status topic");
    let p = producer(KAFKA).expect("producer");
    let mut newest: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut sends = Vec::new();
    for scan in 0..SCANS_PER_SHIPMENT {
        for s in 0..SHIPMENTS {
            // A permutation of 0..8 per shipment: later scans often carry older times.
            let minute = (scan * 5 + s * 3) % SCANS_PER_SHIPMENT;
            let (tracking, status) = (format!("TRK{s:04}"), format!("S{minute:02}"));
            let payload = format!(
                r#"{{"tracking_id":"{tracking}","status":"{status}","event_time":"2026-11-24T10:{minute:02}:00Z"}}"#
            );
            let e = newest.entry(tracking).or_insert((0, String::new()));
            if minute >= e.0 {
                *e = (minute, status);
            }
            let record =
                FutureRecord::<str, str>::to(topic).payload(&payload).partition(((scan + s) % 3) as i32);
            sends.push(p.send_result(record).expect("enqueue"));
        }
    }
    for s in sends {
        s.await.expect("delivery").expect("acked");
    }
    newest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_guarded_upserts_through_kafka_land_in_mysql_once() {
    const EVENTS: u64 = 5_000;
    let env = mysql::env("mysql_e2e").await;
    let status_topic = format!("{}-status", env.topic);
    let status_table = format!("{}_status", env.table);
    env.create_topic(4).await;
    let produced = as_set(env.produce(EVENTS).await);
    let newest = produce_scans(&status_topic).await;
    let mut c = env.mysql().await;
    c.query_drop(format!("DROP TABLE IF EXISTS `{status_table}`")).await.expect("drop");

    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("mysql.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [[mysql.routes]]
            topic = "{status_topic}"
            table = "{status_table}"
            columns = [
              {{ name = "tracking_id", pointer = "/tracking_id", type = "string", max_length = 32, required = true }},
              {{ name = "status", pointer = "/status", type = "string", max_length = 16 }},
              {{ name = "event_time", pointer = "/event_time", type = "timestamp", required = true }},
              {{ name = "kafka_offset", computed = "kafka_offset" }},
            ]
            write = {{ mode = "upsert", key = ["tracking_id"], guard = "event_time" }}
            "#
        ),
    )
    .expect("config file");
    let topics = format!("{},{status_topic}", env.topic);
    // Small batches: a shipment's scans are spread over many transactions.
    let mut child = env.spawn(
        &["--config", &config.to_string_lossy(), "run"],
        &[("DP_KAFKA__TOPICS", &topics), ("DP_BUFFER__MAX_ROWS", "100")],
    );
    // Delivered: every record of both topics is under the group's watermarks.
    let total = EVENTS + SHIPMENTS * SCANS_PER_SHIPMENT;
    let marks = "SELECT CAST(COALESCE(SUM(next_offset), 0) AS UNSIGNED) FROM pipeline_offsets WHERE consumer_group = ?";
    wait_for("every record under the watermarks", Duration::from_secs(90), || async {
        let mut c = env.mysql().await;
        // The pipeline creates the table at its start; until then nothing is delivered.
        let stored: Option<u64> = match c.exec_first(marks, (&env.group,)).await {
            Ok(v) => v,
            Err(mysql_async::Error::Server(e)) if e.code == 1146 => None,
            Err(e) => panic!("watermarks: {e}"),
        };
        stored.unwrap_or(0) >= total
    })
    .await;
    let status = sigterm(&mut child, Duration::from_secs(30));
    assert!(status.success(), "clean exit on SIGTERM, got {status}; log: {}", env.log_path().display());

    // The event log: each event once, its columns taken from its payload, offsets without gaps.
    let (rows, _) = env.assert_stored_once(&produced).await;
    let t = &env.table;
    let consistent = env
        .scalar(&format!(
            "SELECT COUNT(*) FROM `{t}` WHERE tracking_id = JSON_VALUE(payload, '$.tracking_id') AND \
             status = JSON_VALUE(payload, '$.status') AND event_id = JSON_VALUE(payload, '$.event_id') AND \
             DATE_FORMAT(event_time, '%Y-%m-%dT%H:%i:%s.%fZ') LIKE CONCAT(LEFT(JSON_VALUE(payload, '$.event_time'), 23), '%') AND \
             kafka_topic = '{}' AND kafka_timestamp IS NOT NULL",
            env.topic
        ))
        .await;
    assert_eq!(consistent, EVENTS, "columns extracted from each payload");
    let per_partition: Vec<(i32, u64, i64, i64)> = c
        .query(format!(
            "SELECT kafka_partition, COUNT(*), MIN(kafka_offset), MAX(kafka_offset) FROM `{t}` GROUP BY kafka_partition"
        ))
        .await
        .expect("per partition");
    assert_eq!(per_partition.len(), 4);
    let marks = env.watermarks().await;
    for (p, n, min, max) in per_partition {
        assert_eq!((min, max), (0, n as i64 - 1), "partition {p}: offsets 0..{n} without gaps");
        assert_eq!(marks.get(&p), Some(&(n as i64)), "partition {p}: the watermark is one past the last row");
    }

    // The status table: one row per shipment, at its newest scan whatever order they came in.
    let statuses: Vec<(String, String, String)> = c
        .query(format!(
            "SELECT tracking_id, status, DATE_FORMAT(event_time, '%i') FROM `{status_table}` ORDER BY tracking_id"
        ))
        .await
        .expect("status rows");
    assert_eq!(statuses.len() as u64, SHIPMENTS, "one row per shipment");
    for (tracking, status, minute) in statuses {
        let (want_minute, want_status) = &newest[&tracking];
        assert_eq!(
            (status.as_str(), minute.parse::<u64>().expect("minute")),
            (want_status.as_str(), *want_minute),
            "{tracking} must end at its newest scan"
        );
    }
    let stats = common::final_stats(&env.log_path());
    assert_eq!(stats.get("dead_lettered"), Some(&0), "{stats:?}");
    let count = |k: &str| stats.get(k).copied().unwrap_or(0);
    assert_eq!(count("inserted"), EVENTS + SHIPMENTS, "every event and each shipment's first row: {stats:?}");
    assert!(count("updated") > 0, "newer scans update: {stats:?}");
    assert_eq!(count("inserted") + count("updated") + count("duplicates"), total, "{stats:?}");
    assert_eq!(env.redis_keys().await, 0, "no write-ahead keys left");
    eprintln!(
        "MySQL end to end: {rows} event rows, {SHIPMENTS} shipments from {} scans; {stats:?}",
        total - EVENTS
    );
    c.query_drop(format!("DROP TABLE IF EXISTS `{status_table}`")).await.expect("drop");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_backlog_into_mysql_without_a_unique_key_loses_and_duplicates_nothing() {
    const EVENTS: u64 = 30_000;
    const KILLS: usize = 3;
    let env = mysql::env("mysql_kill").await;
    env.without_unique_key().await;
    env.create_topic(4).await;
    let produced = as_set(env.produce(EVENTS).await);
    // Kafka commits are rare, so every restart re-reads records already stored: only the
    // watermark keeps them out.
    let settings = [("DP_KAFKA__COMMIT_INTERVAL", "60s"), ("DP_BUFFER__FLUSH_INTERVAL", "500ms")];
    let count_sql = format!("SELECT COUNT(*) FROM `{}`", env.table);
    let mut rng = rand::rng();
    let mut kills = Vec::new();
    for round in 0..KILLS {
        let before = env.row_count().await;
        let mut child = env.spawn(&["run"], &settings);
        // Killed while it writes: a few batches later, after a random extra delay.
        let step = rng.random_range(1_000..4_000);
        let mut conn = env.mysql().await;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let rows: u64 = conn.query_first(&count_sql).await.expect("count").unwrap_or(0);
            if rows >= before + step {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: no progress ({rows} rows)");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..60))).await;
        sigkill(&mut child);
        let after = env.row_count().await;
        kills.push((before, after));
        assert!(after < EVENTS, "round {round}: the backlog is too small to kill mid-ingest ({after} rows)");
    }
    let mut last = env.spawn(&["run"], &settings);
    wait_for("every event stored", Duration::from_secs(120), || async { env.row_count().await >= EVENTS })
        .await;
    wait_for("Redis emptied", Duration::from_secs(30), || async { env.redis_keys().await == 0 }).await;
    let status = sigterm(&mut last, Duration::from_secs(30));
    assert!(status.success(), "clean exit on SIGTERM, got {status}; log: {}", env.log_path().display());

    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let left = env.redis_leftovers().await;
    eprintln!(
        "kills (rows before, rows at kill): {kills:?}; produced {EVENTS}, rows {rows}, distinct {distinct}"
    );
    assert!(left.is_empty(), "nothing left in Redis: {left:?}");
    env.drop_tables().await;
}
