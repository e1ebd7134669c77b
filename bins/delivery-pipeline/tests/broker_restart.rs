//! A Kafka broker that dies and comes back with its data: a tansu broker of the test's own on S3
//! storage (a moto server of its own, `common::durable_kafka`), SIGKILLed and restarted under
//! the running pipeline. Nothing is lost, nothing is stored twice, the pipeline never exits,
//! and `/readyz` says so while the broker is gone.
//!
//! The table has no unique key: only the transaction and the offset watermark stand between a
//! re-read and a duplicate row. Each outage outlasts the (short) session timeout, so the member
//! loses its assignment without committing, and the group re-forms on the restarted broker;
//! the partitions start at the larger of Kafka's committed offset and the watermark. The test
//! relies on the broker keeping its records across a restart, nothing more: whether it also
//! keeps committed offsets and group state (tansu on S3 does) only changes which of the two
//! start positions wins.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::durable_kafka::DurableKafka;
use common::{TestEnv, as_set, http_address, http_get, log_count, sigterm};
use delivery_pipeline::produce::{ProduceOptions, ensure_topic, produce, producer};
use mysql_async::prelude::Queryable;

/// Enough that the third restart still finds a backlog: since batches are handed over in turn
/// and librdkafka refetches at once, 40,000 were nearly stored by then.
const EVENTS: u64 = 100_000;
const PARTITIONS: i32 = 4;
/// The broker stays down at least this long: past the session timeout (3 s here), so the
/// member loses its assignment, and past librdkafka's statistics interval (0.5 s here), so
/// readiness has seen it.
const SHORT_OUTAGE: Duration = Duration::from_secs(6);
/// One outage lasts longer: librdkafka repeats its errors all along, and none of them may hold
/// the pipeline back once the broker is back.
const LONG_OUTAGE: Duration = Duration::from_secs(20);
/// From the restart to rows flowing again: reconnecting (backoff at most 1 s here), joining
/// the group, fetching; a pipeline working off stale errors takes longer.
const RECOVERY_LIMIT: Duration = Duration::from_secs(15);
/// Rows that must be left in the backlog when the broker is killed.
const BACKLOG_LEFT: u64 = 5_000;
/// What `/readyz` says while no broker connection is up.
const KAFKA_DOWN: &str = "kafka: no broker connection is up";

/// One kill and restart of the broker, as measured.
#[derive(Debug)]
struct Restart {
    what: &'static str,
    rows_at_kill: u64,
    /// Rows once the pipeline had stored what it held (nothing more arrives without a broker).
    rows_at_restart: u64,
    down_to_not_ready: Duration,
    outage: Duration,
    back_to_ready: Duration,
    back_to_rows: Duration,
}

/// Fails the test if the pipeline exited.
fn assert_alive(child: &mut Child, when: &str) {
    if let Some(status) = child.try_wait().expect("try_wait") {
        panic!("the pipeline exited ({status}) {when}");
    }
}

fn readyz(address: &str) -> (u16, String) {
    http_get(address, "/readyz").unwrap_or_else(|e| (0, format!("/readyz unreachable: {e}")))
}

/// Kills the broker (the caller picked the moment: `rows_at_kill` rows were stored), waits until
/// `/readyz` reports Kafka down, keeps the broker down for `min_outage` and until the row count
/// settles, restarts it and waits until `/readyz` is ready and rows flow again.
async fn kill_and_restart(
    what: &'static str,
    env: &TestEnv,
    kafka: &mut DurableKafka,
    child: &mut Child,
    address: &str,
    rows_at_kill: u64,
    min_outage: Duration,
) -> Restart {
    kafka.kill();
    let killed = Instant::now();
    let down_to_not_ready = loop {
        assert_alive(child, "after the broker was killed");
        let (code, body) = readyz(address);
        if code != 200 && body.contains(KAFKA_DOWN) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "/readyz still says {code} {body:?} 30 s after the broker died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Hold the outage until what the pipeline held is stored and the count stands still.
    let (mut rows, mut since) = (env.row_count().await, Instant::now());
    while killed.elapsed() < min_outage || since.elapsed() < Duration::from_secs(2) {
        assert_alive(child, "while the broker was down");
        let (code, body) = readyz(address);
        assert!(
            code != 200 && body.contains(KAFKA_DOWN),
            "/readyz said {code} {body:?} while the broker was down"
        );
        assert!(killed.elapsed() < Duration::from_secs(60), "rows still rising 60 s into the outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = env.row_count().await;
        if now != rows {
            (rows, since) = (now, Instant::now());
        }
    }
    let rows_at_restart = rows;
    assert!(
        rows_at_restart + 1_000 < EVENTS,
        "{what}: the backlog ran out during the outage ({rows_at_restart} rows); nothing left to show recovery"
    );
    let outage = killed.elapsed();
    kafka.restart();
    let restarted = Instant::now();
    let (mut back_to_ready, mut back_to_rows) = (None, None);
    while back_to_ready.is_none() || back_to_rows.is_none() {
        assert_alive(child, "after the broker was restarted");
        assert!(
            restarted.elapsed() < RECOVERY_LIMIT,
            "{what}: {RECOVERY_LIMIT:?} after the restart: ready after {back_to_ready:?}, rows after {back_to_rows:?}; /readyz: {:?}",
            readyz(address)
        );
        if back_to_ready.is_none() && readyz(address).0 == 200 {
            back_to_ready = Some(restarted.elapsed());
        }
        if back_to_rows.is_none() && env.row_count().await > rows_at_restart {
            back_to_rows = Some(restarted.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = Restart {
        what,
        rows_at_kill,
        rows_at_restart,
        down_to_not_ready,
        outage,
        back_to_ready: back_to_ready.expect("measured"),
        back_to_rows: back_to_rows.expect("measured"),
    };
    eprintln!("{r:?}");
    r
}

/// Waits, with the pipeline alive, until at least `rows` rows are stored; returns the count.
async fn wait_rows(env: &TestEnv, child: &mut Child, rows: u64, limit: Duration) -> u64 {
    let started = Instant::now();
    loop {
        assert_alive(child, "during the backlog");
        let now = env.rows_so_far().await;
        if now >= rows {
            return now;
        }
        assert!(started.elapsed() < limit, "{now} rows after {limit:?}, waiting for {rows}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_during_a_backlog_and_a_flush_stores_every_event_once() {
    let started = Instant::now();
    let env = TestEnv::new("broker_restart");
    env.without_unique_key().await;
    let mut kafka = DurableKafka::start(&env.name);
    let brokers = kafka.brokers();
    ensure_topic(&brokers, &env.topic, PARTITIONS).await.expect("topic");
    let opts = ProduceOptions {
        brokers: brokers.clone(),
        topic: env.topic.clone(),
        count: EVENTS,
        rate: None,
        progress: false,
        collect_ids: true,
    };
    let producing = Instant::now();
    let report = produce(&producer(&brokers).expect("producer"), &opts).await.expect("produce");
    assert_eq!(report.produced, EVENTS);
    let produced = as_set(report.event_ids);
    let produce_time = producing.elapsed();

    let settings = [
        ("DP_KAFKA__BROKERS", brokers.as_str()),
        // Short sessions: every outage below outlasts one, so the member loses its assignment.
        ("DP_KAFKA__SESSION_TIMEOUT", "3s"),
        ("DP_KAFKA__REVOCATION_TIMEOUT", "1s"),
        // Readiness learns that no broker is up from librdkafka's statistics (5 s by default).
        ("DP_KAFKA__PROPERTIES__STATISTICS_INTERVAL_MS", "500"),
        // A small prefetch (16 MiB by default: most of the backlog), so at each kill the broker,
        // not the client, holds the rest of the backlog, and it must be read after the restart.
        ("DP_KAFKA__PROPERTIES__QUEUED_MAX_MESSAGES_KBYTES", "1024"),
        ("DP_KAFKA__PROPERTIES__MAX_PARTITION_FETCH_BYTES", "262144"),
        // librdkafka backs off reconnecting up to 10 s by default, which would dominate (and
        // blur) the recovery time measured below.
        ("DP_KAFKA__PROPERTIES__RECONNECT_BACKOFF_MAX_MS", "1000"),
    ];
    let mut pipeline = env.spawn(&["run"], &settings);
    let child = &mut pipeline.0;
    let log = env.log_path();
    let mut address = None;
    while address.is_none() {
        assert_alive(child, "at startup");
        assert!(started.elapsed() < Duration::from_secs(120), "no http endpoint in {}", log.display());
        address = http_address(&log);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let address = address.expect("address");

    // Twice during the backlog, whatever the pipeline is doing.
    let mut restarts = Vec::new();
    for (what, outage) in [("backlog 1", SHORT_OUTAGE), ("backlog 2", LONG_OUTAGE)] {
        let from = restarts.last().map_or(0, |r: &Restart| r.rows_at_restart);
        let rows = wait_rows(&env, child, from + 3_000, Duration::from_secs(120)).await;
        assert!(rows + BACKLOG_LEFT < EVENTS, "{what}: the backlog is nearly done ({rows} rows)");
        restarts.push(kill_and_restart(what, &env, &mut kafka, child, &address, rows, outage).await);
    }
    // Once right after a batch committed: with a backlog, the next batch is already being
    // written (or about to be) when the broker dies.
    let from = restarts.last().map_or(0, |r| r.rows_at_restart);
    wait_rows(&env, child, from + 2_000, Duration::from_secs(120)).await;
    let mut conn = env.mysql().await;
    let count_sql = format!("SELECT COUNT(*) FROM `{}`", env.table);
    let mut last: u64 = conn.query_first(&count_sql).await.expect("count").unwrap_or(0);
    let rose_at = loop {
        assert_alive(child, "during the backlog");
        let rows: u64 = conn.query_first(&count_sql).await.expect("count").unwrap_or(0);
        if rows > last {
            break rows;
        }
        last = rows;
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    drop(conn);
    assert!(rose_at + BACKLOG_LEFT < EVENTS, "flush: the backlog is nearly done ({rose_at} rows)");
    let flush = kill_and_restart("flush", &env, &mut kafka, child, &address, rose_at, SHORT_OUTAGE).await;
    assert!(
        flush.rows_at_restart > flush.rows_at_kill,
        "the batch being written when the broker died is stored without it ({} rows at the kill, {} after)",
        flush.rows_at_kill,
        flush.rows_at_restart
    );
    restarts.push(flush);

    // Every event, counted once: duplicate rows must not stand in for missing ones.
    let started_tail = Instant::now();
    while env.rows_and_distinct().await.1 < EVENTS {
        assert_alive(child, "at the end of the backlog");
        let limit = Duration::from_secs(180);
        assert!(started_tail.elapsed() < limit, "not every event stored after {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // a duplicate would arrive behind
    assert_alive(child, "after the backlog");
    let status = sigterm(child, Duration::from_secs(25));
    assert!(status.success(), "clean exit on SIGTERM, got {status}");

    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let coordinates = env.distinct_coordinates().await;
    let leftovers = env.redis_leftovers().await;
    let watermarks = env.watermarks().await;
    let committed = env.committed(&brokers, PARTITIONS);
    let lost = log_count(&log, "assignment lost");
    let at_watermark = log_count(&log, "partition starts at the stored watermark");
    eprintln!(
        "broker killed and restarted {} times: produced {EVENTS} in {produce_time:?}; rows {rows}, distinct {distinct}, distinct coordinates {coordinates}, redis keys left {}; assignments lost {lost}, partitions started at the watermark {at_watermark}; watermarks {watermarks:?}, kafka committed {committed:?}; wall time {:?}",
        restarts.len(),
        leftovers.len(),
        started.elapsed()
    );
    for r in &restarts {
        eprintln!(
            "  {}: rows at kill {}, at restart {}; not ready {:?} after the kill; down {:?}; ready {:?} and rows flowing {:?} after the restart",
            r.what,
            r.rows_at_kill,
            r.rows_at_restart,
            r.down_to_not_ready,
            r.outage,
            r.back_to_ready,
            r.back_to_rows
        );
    }
    assert_eq!(coordinates, rows, "no message stored twice");
    assert!(lost >= restarts.len(), "every outage outlasted the session: {lost} assignments lost");
    // The batch stored while the broker was down after the flush kill could not be committed
    // to Kafka: at the restart its partition started at the watermark, not at Kafka's commit.
    assert!(at_watermark >= 1, "no partition started at the watermark ahead of kafka's commit");
    assert!(leftovers.is_empty(), "nothing left in Redis: {leftovers:?}");
    env.drop_tables().await;
}
