//! Many instances: three of the real binary in one consumer group over a 12-partition topic.
//!
//! The test measures, and prints for the CI log, rows/s with one instance and with three, and
//! how many rows each of the three inserted (from its `/metrics` counter, checked against the
//! partitions it owned). It then SIGKILLs one instance mid-backlog and checks that its
//! partitions move to the survivors, that its Redis buffer is adopted, and that every event is
//! stored exactly once. Timings are reported, never asserted: only correctness is.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{KAFKA, TestEnv, as_set, http_address, http_get, metric_sum, sigkill, sigterm, wait_for};
use delivery_pipeline::produce::{ProduceOptions, produce, producer};
use mysql_async::prelude::Queryable;

const PARTITIONS: i32 = 12;
const NAMES: [&str; 3] = ["s1", "s2", "s3"];
const VICTIM: &str = "s2";
const ASSIGNED: &str = "kafka partitions assigned";
/// `buffer.max_rows`, the default batch size.
const MAX_ROWS: u64 = 1_000;

/// The backlog of each phase (one instance alone, three, three with one killed): 60,000
/// events, or `SCALE_TEST_EVENTS` for a longer measurement (`docs/capacity.md`).
fn events() -> u64 {
    std::env::var("SCALE_TEST_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(60_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_partitions_and_survivors_take_over_from_a_killed_one() {
    let n = events();
    let env = TestEnv::new("scale");
    env.create_topic(PARTITIONS).await;
    // Without the unique key: a partition stored twice across a hand-over or an adoption shows.
    env.without_unique_key().await;
    // A short lease, so the survivors adopt the killed instance's Redis buffer within seconds.
    let settings = [("DP_REDIS__LEASE_TTL", "3s")];
    let mut conn = env.mysql().await;
    let mut produced = BTreeSet::new();
    let mut children = BTreeMap::new();

    // Phase 1: one instance alone.
    children.insert("s1", env.spawn_named("s1", &["run"], &settings));
    wait_for("s1 assigned", Duration::from_secs(60), || async { assigned_lines(&env, "s1") >= 1 }).await;
    let alone = backlog(&env, &mut conn, n, 0, 1).await;
    alone.report("1 instance");
    produced.extend(alone.ids);

    // Phase 2: three instances. Each joins only once the previous one holds partitions (tansu
    // wedges a group that a member joins while it is forming), then the group must settle.
    for name in ["s2", "s3"] {
        children.insert(name, env.spawn_named(name, &["run"], &settings));
        wait_for(&format!("{name} assigned"), Duration::from_secs(60), || async {
            assigned_lines(&env, name) >= 1
        })
        .await;
    }
    wait_for("the three instances to share all 12 partitions", Duration::from_secs(60), || async {
        let owned: Vec<_> = NAMES.iter().map(|name| owned(&env, name)).collect();
        owned.iter().all(|o| !o.is_empty()) && disjoint_cover(&owned)
    })
    .await;
    let owners: BTreeMap<&str, BTreeSet<i32>> = NAMES.iter().map(|name| (*name, owned(&env, name))).collect();
    let rebalances_before = NAMES.map(|name| assigned_lines(&env, name));
    let inserted_before = NAMES.map(|name| inserted(&env, name));
    let stored_before = watermarks(&env, &mut conn).await;
    let shared = backlog(&env, &mut conn, n, n, NAMES.len() as u64).await;
    let stored_after = watermarks(&env, &mut conn).await;
    // The counters are raised just after each commit: give the last one a moment.
    wait_for("every row counted by exactly one instance", Duration::from_secs(10), || async {
        NAMES.iter().map(|name| inserted(&env, name)).sum::<u64>() == inserted_before.iter().sum::<u64>() + n
    })
    .await;
    assert_eq!(
        NAMES.map(|name| assigned_lines(&env, name)),
        rebalances_before,
        "no rebalance during phase 2"
    );
    shared.report("3 instances");
    produced.extend(shared.ids);
    for (i, name) in NAMES.iter().enumerate() {
        let rows = inserted(&env, name) - inserted_before[i];
        let by_partition: u64 = owners[name].iter().map(|p| stored_after[p] - stored_before[p]).sum();
        eprintln!(
            "scale:   {name}: {rows} rows ({:.1}%), partitions {:?} (rows of those partitions: {by_partition})",
            100.0 * rows as f64 / n as f64,
            owners[name]
        );
        assert_eq!(rows, by_partition, "{name} inserted exactly the rows of the partitions it owned");
    }

    // Phase 3: SIGKILL one instance a quarter of the way through a backlog.
    let base = 2 * n;
    let survivors: Vec<&str> = NAMES.into_iter().filter(|name| *name != VICTIM).collect();
    let survivors_before: Vec<u64> = survivors.iter().map(|name| inserted(&env, name)).collect();
    let survivors_rebalances: Vec<usize> = survivors.iter().map(|name| assigned_lines(&env, name)).collect();
    let victim_partitions = owned(&env, VICTIM);
    let victim_before = inserted(&env, VICTIM);
    let started = Instant::now();
    let load = produce_in_background(&env, n);
    let mut victim_last = victim_before;
    loop {
        victim_last = inserted(&env, VICTIM).max(victim_last);
        if stored(&env, &mut conn).await >= base + n / 4 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60 + n / 2_000), "phase 3: no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut victim = children.remove(VICTIM).expect("victim running");
    sigkill(&mut victim);
    let killed = Instant::now();
    let at_kill = watermarks(&env, &mut conn).await;
    let held = env.redis_keys_named(VICTIM).await;

    // The survivors take the victim's partitions once its session times out (6 s).
    let mut reassigned = None;
    let mut adopted = None;
    let mut done = None;
    while reassigned.is_none() || adopted.is_none() || done.is_none() {
        let limit = Duration::from_secs(60 + n / 2_000);
        assert!(killed.elapsed() < limit, "phase 3 did not finish within {limit:?} of the kill");
        if reassigned.is_none()
            && survivors
                .iter()
                .zip(&survivors_rebalances)
                .all(|(name, before)| assigned_lines(&env, name) > *before)
            && disjoint_cover(&survivors.iter().map(|name| owned(&env, name)).collect::<Vec<_>>())
        {
            reassigned = Some(killed.elapsed());
        }
        if adopted.is_none() && env.redis_keys_named(VICTIM).await == 0 {
            adopted = Some(killed.elapsed());
        }
        if done.is_none() && stored(&env, &mut conn).await >= base + n {
            done = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ids, _) = load.await.expect("producer task");
    produced.extend(ids);
    let after = watermarks(&env, &mut conn).await;
    let moved: u64 = victim_partitions.iter().map(|p| after[p] - at_kill[p]).sum();
    assert!(moved > 0, "the kill must land mid-backlog: the victim's partitions had nothing left to store");
    let survivors_rows: Vec<u64> =
        survivors.iter().zip(&survivors_before).map(|(name, before)| inserted(&env, name) - before).collect();
    let victim_rows = n
        .checked_sub(survivors_rows.iter().sum::<u64>())
        .expect("the survivors inserted no more rows than the phase stored");
    assert!(victim_rows >= victim_last - victim_before, "the victim's share is at least what it reported");
    eprintln!(
        "scale: failover: SIGKILL {VICTIM} (partitions {victim_partitions:?}, {held} Redis keys) at {} of {n} rows; \
         survivors assigned its partitions after {:.2} s, its buffer adopted after {:.2} s, backlog stored {:.2} s after the kill \
         ({:.1} s in all); {moved} rows of its partitions stored after the kill; load average {}",
        at_kill.values().sum::<u64>() - base,
        reassigned.unwrap_or_default().as_secs_f64(),
        adopted.unwrap_or_default().as_secs_f64(),
        done.unwrap_or_default().as_secs_f64(),
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    eprintln!(
        "scale:   {VICTIM}: {victim_rows} rows before it died ({:.1}%; its metrics showed {} last)",
        100.0 * victim_rows as f64 / n as f64,
        victim_last - victim_before
    );
    for (name, rows) in survivors.iter().zip(&survivors_rows) {
        eprintln!(
            "scale:   {name}: {rows} rows ({:.1}%), now partitions {:?}",
            100.0 * *rows as f64 / n as f64,
            owned(&env, name)
        );
    }
    if held > 0 {
        let logs: String = survivors.iter().map(|name| common::read_log(&env.log_path_named(name))).collect();
        assert!(logs.contains("adopted and delivered an orphaned buffer"), "a survivor adopted the buffer");
    }

    for (name, mut child) in children {
        let status = sigterm(&mut child, Duration::from_secs(25));
        assert!(status.success(), "{name} must exit 0 on SIGTERM, got {status}");
    }
    for name in NAMES {
        assert_eq!(env.redis_keys_named(name).await, 0, "{name} left write-ahead keys");
    }
    let total = 3 * n;
    let (rows, distinct): (u64, u64) = conn
        .query_first(format!("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM `{}`", env.table))
        .await
        .expect("count")
        .expect("one row");
    let dead = env.scalar(&format!("SELECT COUNT(*) FROM `{}_dead_letter`", env.table)).await;
    assert_eq!(produced.len() as u64, total, "every produced event id is distinct");
    assert_eq!((rows, distinct, dead), (total, total, 0), "no loss, no duplicate, no dead letter");
    assert_eq!(as_set(env.event_ids().await), produced, "exactly the produced event ids");

    // What a stored event costs on disk, for sizing (InnoDB's page counts, fresh after ANALYZE).
    conn.query_drop(format!("ANALYZE TABLE `{}`", env.table)).await.expect("analyze");
    let (data, index): (u64, u64) = conn
        .exec_first(
            "SELECT DATA_LENGTH, INDEX_LENGTH FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (&env.table,),
        )
        .await
        .expect("table size")
        .expect("one row");
    let payload: f64 = conn
        .query_first(format!("SELECT CAST(AVG(LENGTH(payload)) AS DOUBLE) FROM `{}`", env.table))
        .await
        .expect("payload size")
        .unwrap_or_default();
    eprintln!(
        "scale: table: {rows} rows, data {:.1} MiB + indexes {:.1} MiB = {:.0} bytes per row (payloads average {payload:.0} bytes)",
        data as f64 / 1_048_576.0,
        index as f64 / 1_048_576.0,
        (data + index) as f64 / rows as f64
    );
    env.drop_tables().await;
}

/// One backlog stored: its event ids and timings from the first event produced.
struct Backlog {
    ids: Vec<String>,
    count: u64,
    /// When all but the last `max_rows` rows of each instance were stored: the rate of a
    /// running backlog. The last partial batches wait for the flush interval (1 s), which a
    /// continuous stream never does.
    body: (u64, Duration),
    /// When every row was stored.
    took: Duration,
    produce_took: Duration,
}

impl Backlog {
    fn report(&self, who: &str) {
        let (rows, body) = self.body;
        eprintln!(
            "scale: {who}: {:.0} rows/s ({rows} rows in {:.2} s; all {} after {:.2} s, the producer done after {:.2} s); load average {}",
            rows as f64 / body.as_secs_f64(),
            body.as_secs_f64(),
            self.count,
            self.took.as_secs_f64(),
            self.produce_took.as_secs_f64(),
            loadavg()
        );
    }
}

/// Produces `count` events as fast as the broker takes them and waits until the group of
/// `instances` has stored `base + count` in all.
async fn backlog(
    env: &TestEnv,
    conn: &mut mysql_async::Conn,
    count: u64,
    base: u64,
    instances: u64,
) -> Backlog {
    let started = Instant::now();
    let load = produce_in_background(env, count);
    let limit = Duration::from_secs(60 + count / 2_000);
    let body_rows = count.saturating_sub(instances * MAX_ROWS);
    let mut body = None;
    loop {
        let stored = stored(env, conn).await;
        if body.is_none() && stored >= base + body_rows {
            body = Some((body_rows, started.elapsed()));
        }
        if stored >= base + count {
            break;
        }
        assert!(started.elapsed() < limit, "{count} events not stored within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let (ids, produce_took) = load.await.expect("producer task");
    Backlog { ids, count, body: body.unwrap_or((count, took)), took, produce_took }
}

fn produce_in_background(env: &TestEnv, count: u64) -> tokio::task::JoinHandle<(Vec<String>, Duration)> {
    let opts = ProduceOptions {
        brokers: KAFKA.into(),
        topic: env.topic.clone(),
        count,
        rate: None,
        progress: false,
        collect_ids: true,
    };
    tokio::spawn(async move {
        let report = produce(&producer(KAFKA).expect("producer"), &opts).await.expect("produce");
        assert_eq!(report.produced, count);
        (report.event_ids, report.elapsed)
    })
}

/// The group's offset watermark per partition: rows stored so far (offsets start at 0 on a
/// fresh topic, and nothing is dead-lettered). Cheaper than counting the table while it fills.
async fn watermarks(env: &TestEnv, conn: &mut mysql_async::Conn) -> BTreeMap<i32, u64> {
    let mut marks: BTreeMap<i32, u64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    let rows: Vec<(i32, u64)> = conn
        .exec(
            "SELECT kafka_partition, next_offset FROM pipeline_offsets WHERE consumer_group = ? AND topic = ?",
            (&env.group, &env.topic),
        )
        .await
        .expect("read watermarks");
    marks.extend(rows);
    marks
}

async fn stored(env: &TestEnv, conn: &mut mysql_async::Conn) -> u64 {
    watermarks(env, conn).await.values().sum()
}

/// Rows an instance reports having inserted (`dp_rows_inserted_total` on its `/metrics`).
fn inserted(env: &TestEnv, name: &str) -> u64 {
    let address = http_address(&env.log_path_named(name)).expect("http address in the log");
    let (code, text) = http_get(&address, "/metrics").expect("metrics endpoint");
    assert_eq!(code, 200, "{name} /metrics");
    metric_sum(&text, "dp_rows_inserted_total") as u64
}

fn assigned_lines(env: &TestEnv, name: &str) -> usize {
    common::log_count(&env.log_path_named(name), ASSIGNED)
}

/// The partitions an instance holds now, from its log: each "assigned" line adds its
/// partitions, each "revoked" line takes its partitions away.
fn owned(env: &TestEnv, name: &str) -> BTreeSet<i32> {
    common::owned_partitions(&env.log_path_named(name))
}

fn disjoint_cover(sets: &[BTreeSet<i32>]) -> bool {
    common::disjoint_cover(sets, PARTITIONS)
}

fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

#[test]
fn partitions_are_read_from_a_log_line() {
    let line = r#"2026-11-27T10:31:55Z INFO dp_source_kafka::poller: kafka partitions assigned partitions=[("t-a", 0), ("t-a", 11)]"#;
    assert_eq!(common::partitions_in(line), [0, 11]);
    assert!(common::partitions_in("no list here").is_empty());
}
