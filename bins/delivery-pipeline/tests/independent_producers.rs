//! Messages from a Kafka client that is not librdkafka: kafka-python (pure Python), with each
//! compression codec, keys and headers (one not UTF-8). Every other test produces with
//! librdkafka, so it and the consumer share one idea of the protocol; here another client's
//! record batches, compression framing and relative offsets must arrive as exactly the
//! produced events, end to end and across SIGKILLs.
//!
//! The producer is `tests/support/kafka_python_produce.py`; its dependencies are pinned in
//! `tests/support/requirements.txt` (installed by `scripts/test.sh`). Without python3 or kafka-python
//! the tests fail, naming the fix.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{KAFKA, TestEnv, as_set, log_count, sigkill, sigterm, wait_for};
use mysql_async::prelude::Queryable;
use rand::Rng;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/kafka_python_produce.py");
const REQUIREMENTS: &str = "bins/delivery-pipeline/tests/support/requirements.txt";
const PARTITIONS: i32 = 4;
/// End to end: five batches of 1000 per codec.
const EVENTS: u64 = 5_000;
/// SIGKILL: a backlog that outlasts `KILLS` kills of a few thousand rows each.
const KILL_EVENTS: u64 = 30_000;
const KILLS: usize = 3;

/// What kafka-python sent, per `event_id`: the message key and the `trace-id` header.
struct Sent {
    messages: BTreeMap<String, (String, String)>,
}

impl Sent {
    fn ids(&self) -> BTreeSet<String> {
        self.messages.keys().cloned().collect()
    }
}

/// Produces `count` events to the test's topic with kafka-python and `codec`.
fn produce_with_kafka_python(env: &TestEnv, codec: &str, count: u64) -> Sent {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-sent.tsv", env.name));
    let started = Instant::now();
    let run = Command::new("python3")
        .arg(SCRIPT)
        .args(["--brokers", KAFKA, "--topic", &env.topic, "--compression", codec])
        .args(["--count", &count.to_string(), "--out"])
        .arg(&out)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python3 ({e}): these tests produce with kafka-python; install Python 3 \
                 (Debian: apt-get install python3 python3-pip), then python3 -m pip install -r {REQUIREMENTS}"
            )
        });
    assert!(
        run.status.success(),
        "the kafka-python producer failed ({}): {}\n(the fix for a missing module: python3 -m pip install -r {REQUIREMENTS})",
        run.status,
        String::from_utf8_lossy(&run.stderr).trim()
    );
    let text = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("cannot read {}: {e}", out.display()));
    let _ = std::fs::remove_file(&out);
    let mut messages = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split('\t');
        let (Some(id), Some(key), Some(trace), None) = (f.next(), f.next(), f.next(), f.next()) else {
            panic!("malformed line from the producer: {line:?}");
        };
        let again = messages.insert(id.to_owned(), (key.to_owned(), trace.to_owned()));
        assert!(again.is_none(), "the producer reported event id {id} twice");
    }
    assert_eq!(messages.len() as u64, count, "the producer reported {} of {count} events", messages.len());
    eprintln!("{codec}: kafka-python produced {count} events in {:?}", started.elapsed());
    Sent { messages }
}

/// Rows of `table`, 0 while it does not exist yet (the pipeline creates it at startup): for
/// polling only.
async fn rows_so_far(env: &TestEnv, table: &str) -> u64 {
    let mut c = env.mysql().await;
    match c.query_first::<u64, _>(format!("SELECT COUNT(*) FROM `{table}`")).await {
        Ok(n) => n.unwrap_or(0),
        Err(mysql_async::Error::Server(e)) if e.code == 1146 => 0,
        Err(e) => panic!("counting rows of {table}: {e}"),
    }
}

/// Rows of `table`, which must exist (a count of a missing table is no evidence).
async fn count_rows(env: &TestEnv, table: &str) -> u64 {
    let mut c = env.mysql().await;
    c.query_first::<u64, _>(format!("SELECT COUNT(*) FROM `{table}`"))
        .await
        .unwrap_or_else(|e| panic!("counting rows of {table}: {e}"))
        .unwrap_or(0)
}

/// Declared columns that keep the key and the UTF-8 headers, so the test can see them arrive
/// (the built-in table stores neither). The `binary` header is not UTF-8 and has no column: it
/// must simply not disturb anything.
const COLUMNS: &str = r#"
[mysql]
columns = [
  { name = "event_id", pointer = "/event_id", type = "string", max_length = 64, required = true },
  { name = "tracking_id", pointer = "/tracking_id", type = "string", max_length = 64 },
  { name = "status", pointer = "/status", type = "string", max_length = 32 },
  { name = "event_time", pointer = "/event_time", type = "timestamp" },
  { name = "payload", computed = "payload" },
  { name = "kafka_partition", computed = "kafka_partition" },
  { name = "kafka_offset", computed = "kafka_offset" },
  { name = "kafka_key", computed = "kafka_key", max_length = 64 },
  { name = "trace_id", computed = "header:trace-id", type = "string", max_length = 64 },
  { name = "source", computed = "header:source", type = "string", max_length = 64 },
]
write = { mode = "insert", key = ["event_id"] }
"#;

/// kafka-python with `codec` → the binary → exactly the produced events, keys and headers.
async fn end_to_end(codec: &str) {
    let started = Instant::now();
    let env = TestEnv::new(&format!("kpy_{codec}"));
    env.create_topic(PARTITIONS).await;
    let sent = produce_with_kafka_python(&env, codec, EVENTS);
    let config = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.toml", env.name));
    std::fs::write(&config, COLUMNS).expect("write the config file");
    let config = config.to_str().expect("UTF-8 path");

    let mut child = env.spawn(&["--config", config, "run"], &[]);
    wait_for(
        &format!("{EVENTS} rows ({codec}); log: {}", env.log_path().display()),
        Duration::from_secs(90),
        || async { rows_so_far(&env, &env.table).await >= EVENTS },
    )
    .await;
    wait_for("Redis emptied", Duration::from_secs(30), || async { env.redis_keys().await == 0 }).await;
    let status = sigterm(&mut child, Duration::from_secs(30));
    assert!(status.success(), "clean exit on SIGTERM, got {status}; log: {}", env.log_path().display());

    let t = &env.table;
    let mut c = env.mysql().await;
    let (rows, distinct): (u64, u64) = c
        .query_first(format!("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM `{t}`"))
        .await
        .expect("count")
        .expect("one row");
    let dead = count_rows(&env, &format!("{t}_dead_letter")).await;
    let keys = env.redis_keys().await;
    eprintln!(
        "{codec}: produced {EVENTS}, rows {rows}, distinct {distinct}, dead letters {dead}, redis keys {keys}, wall {:?}",
        started.elapsed()
    );
    assert_eq!(dead, 0, "no dead letters; log: {}", env.log_path().display());
    assert_eq!(rows, EVENTS, "one row per produced event");
    assert_eq!(distinct, EVENTS);
    assert_eq!(keys, 0, "no write-ahead keys left");

    // Each event, with the key and the trace-id header it was sent with.
    let stored: Vec<(String, Option<String>, Option<String>)> = c
        .query(format!("SELECT event_id, kafka_key, trace_id FROM `{t}`"))
        .await
        .expect("select keys and headers");
    let stored: BTreeMap<String, (Option<String>, Option<String>)> =
        stored.into_iter().map(|(id, key, trace)| (id, (key, trace))).collect();
    assert_eq!(stored.keys().cloned().collect::<BTreeSet<_>>(), sent.ids(), "exactly the produced event ids");
    for (id, (key, trace)) in &sent.messages {
        let (got_key, got_trace) = &stored[id];
        assert_eq!(got_key.as_deref(), Some(key.as_str()), "event {id}: the message key arrives intact");
        assert_eq!(
            got_trace.as_deref(),
            Some(trace.as_str()),
            "event {id}: the trace-id header arrives intact"
        );
    }
    let sources: Vec<Option<String>> =
        c.query(format!("SELECT DISTINCT source FROM `{t}`")).await.expect("select source header");
    assert!(
        matches!(sources.as_slice(), [Some(s)] if s.starts_with("kafka-python ") && s.ends_with(" ✓")),
        "every row has the UTF-8 source header, as sent: {sources:?}"
    );
    // The columns come from each payload.
    let consistent = env
        .scalar(&format!(
            "SELECT COUNT(*) FROM `{t}` WHERE \
             event_id = JSON_VALUE(payload, '$.event_id') AND \
             tracking_id = JSON_VALUE(payload, '$.tracking_id') AND \
             status = JSON_VALUE(payload, '$.status') AND \
             JSON_VALUE(payload, '$.producer') = 'kafka-python' AND \
             DATE_FORMAT(event_time, '%Y-%m-%dT%H:%i:%s.%fZ') LIKE CONCAT(LEFT(JSON_VALUE(payload, '$.event_time'), 23), '%')"
        ))
        .await;
    assert_eq!(consistent, EVENTS, "columns must be extracted from each payload");
    // kafka-python's batches number records relative to a base offset: each partition's
    // offsets must be 0..n, each once.
    let per_partition: Vec<(i32, u64, i64, i64)> = c
        .query(format!(
            "SELECT kafka_partition, COUNT(*), MIN(kafka_offset), MAX(kafka_offset) FROM `{t}` GROUP BY kafka_partition"
        ))
        .await
        .expect("per partition");
    assert_eq!(per_partition.len(), PARTITIONS as usize, "keys spread over every partition");
    for (p, n, min, max) in per_partition {
        assert_eq!((min, max), (0, n as i64 - 1), "partition {p}: offsets must be 0..{n} without gaps");
    }
    drop(c);
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_uncompressed_events_arrive_exactly_with_keys_and_headers() {
    end_to_end("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_gzip_events_arrive_exactly_with_keys_and_headers() {
    end_to_end("gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_snappy_events_arrive_exactly_with_keys_and_headers() {
    end_to_end("snappy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_lz4_events_arrive_exactly_with_keys_and_headers() {
    end_to_end("lz4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_zstd_events_arrive_exactly_with_keys_and_headers() {
    end_to_end("zstd").await;
}

/// kafka-python with `codec`, the built-in table without its unique key on `event_id`, and
/// the binary SIGKILLed mid-ingest `KILLS` times: every event is stored exactly once.
async fn sigkill_without_unique_key(codec: &str) {
    let started = Instant::now();
    let env = TestEnv::new(&format!("kpy_kill_{codec}"));
    let out = env.spawn(&["migrate"], &[]).wait().expect("migrate");
    assert!(out.success(), "migrate failed; log: {}", env.log_path().display());
    let mut c = env.mysql().await;
    c.query_drop(format!("ALTER TABLE `{}` DROP INDEX `uq_event_id`", env.table))
        .await
        .expect("drop unique key");
    env.create_topic(PARTITIONS).await;
    let produced = produce_with_kafka_python(&env, codec, KILL_EVENTS).ids();

    // Kafka commits are rare, so each restart re-reads records already stored: only the offset
    // watermark keeps them from becoming duplicate rows.
    let settings = [("DP_KAFKA__COMMIT_INTERVAL", "60s"), ("DP_BUFFER__FLUSH_INTERVAL", "500ms")];
    let count_sql = format!("SELECT COUNT(*) FROM `{}`", env.table);
    let mut rng = rand::rng();
    let mut kills = Vec::new();
    for round in 0..KILLS {
        let before: u64 = c.query_first(&count_sql).await.expect("count").unwrap_or(0);
        let mut child = env.spawn(&["run"], &settings);
        // As in fault_sigkill.rs: once a few more batches are stored, after a random extra
        // delay, so the kill lands inside or between flushes.
        let step = rng.random_range(1_500..4_000);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let rows: u64 = c.query_first(&count_sql).await.ok().flatten().unwrap_or(0);
            if rows >= before + step {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no progress ({rows} rows); log: {}",
                env.log_path().display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..60))).await;
        sigkill(&mut child);
        let after: u64 = c.query_first(&count_sql).await.expect("count").unwrap_or(0);
        kills.push((before, after));
        assert!(
            after < KILL_EVENTS,
            "round {round}: the backlog is too small to kill mid-ingest ({after} rows)"
        );
    }
    let mut last = env.spawn(&["run"], &settings);
    wait_for(
        &format!("{KILL_EVENTS} rows ({codec}); log: {}", env.log_path().display()),
        Duration::from_secs(120),
        || async { rows_so_far(&env, &env.table).await >= KILL_EVENTS },
    )
    .await;
    wait_for(
        "Redis emptied (what killed runs left there restored and deleted)",
        Duration::from_secs(30),
        || async { env.redis_keys().await == 0 },
    )
    .await;
    let status = sigterm(&mut last, Duration::from_secs(30));
    assert!(status.success(), "clean exit on SIGTERM, got {status}; log: {}", env.log_path().display());

    let restores = log_count(&env.log_path(), "restoring records buffered by an earlier run");
    let (rows, distinct): (u64, u64) = c
        .query_first(format!("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM `{}`", env.table))
        .await
        .expect("count")
        .expect("one row");
    let dead = count_rows(&env, &format!("{}_dead_letter", env.table)).await;
    let keys = env.redis_keys().await;
    eprintln!(
        "{codec}: kills (rows before, rows at kill) {kills:?}; starts that restored {restores}; produced {KILL_EVENTS}, rows {rows}, distinct {distinct}, \
         dead letters {dead}, redis keys {keys}, wall {:?}",
        started.elapsed()
    );
    assert_eq!(dead, 0, "no dead letters; log: {}", env.log_path().display());
    assert_eq!(distinct, KILL_EVENTS, "no event lost");
    assert_eq!(rows, KILL_EVENTS, "no duplicate row");
    assert_eq!(as_set(env.event_ids().await), produced, "exactly the produced event ids");
    let consistent = env
        .scalar(&format!(
            "SELECT COUNT(*) FROM `{}` WHERE event_id = JSON_VALUE(payload, '$.event_id') AND kafka_topic = '{}'",
            env.table, env.topic
        ))
        .await;
    assert_eq!(consistent, KILL_EVENTS, "each row holds its own payload and topic");
    assert_eq!(keys, 0, "no write-ahead keys left");
    assert!(restores > 0, "no kill left buffered records to restore: the restore path went untested");
    drop(c);
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_zstd_backlog_survives_sigkills_without_a_unique_key() {
    sigkill_without_unique_key("zstd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_snappy_backlog_survives_sigkills_without_a_unique_key() {
    sigkill_without_unique_key("snappy").await;
}
