//! `commit_policy = "after_buffer"` for real: a Redis of the test's own that persists every write
//! (`appendonly yes`, `appendfsync always`), Kafka committing what is only in Redis, and the
//! pipeline killed again and again. Kafka will not deliver those records again: only the
//! restore and the adoption can store them. Tables have no unique key on `event_id`, so the
//! stored-offset ranges alone keep a record from being stored twice.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{
    KAFKA, OwnRedis, TestEnv, as_set, free_port, log_count, owned_partitions, sigkill, sigterm, wait_for,
};
use rand::Rng;

const PARTITIONS: i32 = 4;

/// Sum of the group's committed offsets over `partitions` (none committed counts 0). Offsets of
/// a fresh topic start at 0 and have no gaps, so this is a count of records.
fn committed_sum(env: &TestEnv, partitions: &BTreeSet<i32>) -> u64 {
    let committed = env.committed(KAFKA, PARTITIONS);
    partitions.iter().map(|p| committed[*p as usize].unwrap_or(0) as u64).sum()
}

fn all_partitions() -> BTreeSet<i32> {
    (0..PARTITIONS).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_five_times_during_a_200k_backlog_with_kafka_committed_ahead_stores_every_event_once() {
    // Five kills need room: a round can store tens of thousands of rows before Kafka is seen
    // ahead of MySQL (right after a restart the restore and the catch-up keep them level).
    const EVENTS: u64 = 200_000;
    const KILLS: usize = 5;
    let env = TestEnv::new("ab_kill");
    env.create_topic(PARTITIONS).await;
    env.without_unique_key().await;
    let produced = as_set(env.produce(EVENTS).await);
    let redis = OwnRedis::start_persistent(free_port());
    let url = redis.url();
    // Frequent commits: Kafka runs ahead of what MySQL has stored by up to the two batches in
    // memory (4,000 records). Batches of 2,000 keep the steps of the stored count small.
    let settings = [
        ("DP_COMMIT_POLICY", "after_buffer"),
        ("DP_REDIS__URL", url.as_str()),
        ("DP_KAFKA__COMMIT_INTERVAL", "200ms"),
        ("DP_BUFFER__MAX_ROWS", "2000"),
        ("DP_BUFFER__FLUSH_INTERVAL", "1s"),
    ];
    let mut rng = rand::rng();
    let mut kills = Vec::new();
    for round in 0..KILLS {
        let before = env.rows_so_far().await;
        let mut child = env.spawn(&["run"], &settings);
        let step = rng.random_range(1_000..6_000);
        let started = Instant::now();
        // Kill only while Kafka's committed offsets are ahead of MySQL: records committed to
        // Kafka and held only in Redis (the policy is in force).
        let (stored, committed) = loop {
            let stored = env.rows_so_far().await;
            let committed = committed_sum(&env, &all_partitions());
            if stored >= before + step && committed > stored + 1_000 {
                break (stored, committed);
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "round {round}: Kafka never ran ahead of MySQL ({stored} stored, {committed} committed)"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        sigkill(&mut child);
        kills.push((before, stored, committed));
        assert!(stored < EVENTS, "round {round}: the backlog is too small to kill mid-ingest");
    }
    let mut last = env.spawn(&["run"], &settings);
    wait_for("every event stored", Duration::from_secs(180), || async { env.rows_so_far().await >= EVENTS })
        .await;
    let client = redis.client().await;
    wait_for("Redis emptied", Duration::from_secs(30), || async {
        common::buffer_keys(&client, &env.key_prefix, &env.instance).await == 0
    })
    .await;
    let status = sigterm(&mut last, Duration::from_secs(30));
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
    let restores = log_count(&env.log_path(), "restoring records buffered by an earlier run");
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let left = common::prefix_keys(&client, &env.key_prefix).await;
    eprintln!(
        "after_buffer kills (rows before, rows at kill, kafka committed at kill): {kills:?}; {restores} restores; produced {EVENTS}, rows {rows}, distinct {distinct}, redis keys left {}",
        left.len()
    );
    assert!(restores >= 1, "records Kafka had committed past came back from Redis");
    assert!(left.is_empty(), "nothing left in Redis: {left:?}");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_records_are_adopted_after_newer_rows_of_its_partitions_were_stored() {
    const FIRST: u64 = 8_000;
    const SECOND: u64 = 4_000;
    let env = TestEnv::new("ab_orphan");
    env.create_topic(PARTITIONS).await;
    env.without_unique_key().await;
    let redis = OwnRedis::start_persistent(free_port());
    let url = redis.url();
    // A long lease: the survivor stores newer records of the dead instance's partitions well
    // before it may adopt the dead instance's older ones.
    let shared = [
        ("DP_COMMIT_POLICY", "after_buffer"),
        ("DP_REDIS__URL", url.as_str()),
        ("DP_KAFKA__COMMIT_INTERVAL", "300ms"),
        ("DP_REDIS__LEASE_TTL", "20s"),
    ];
    // A never flushes on its own; B stores at once.
    let hold = [("DP_BUFFER__MAX_ROWS", "100000"), ("DP_BUFFER__FLUSH_INTERVAL", "10m")];
    let mut a = env.spawn_named("a", &["run"], &[&shared[..], &hold[..]].concat());
    wait_for("a assigned", Duration::from_secs(60), || async {
        log_count(&env.log_path_named("a"), "kafka partitions assigned") >= 1
    })
    .await;
    let mut b =
        env.spawn_named("b", &["run"], &[&shared[..], &[("DP_BUFFER__FLUSH_INTERVAL", "500ms")]].concat());
    wait_for("a settled group of two", Duration::from_secs(60), || async {
        let held = [owned_partitions(&env.log_path_named("a")), owned_partitions(&env.log_path_named("b"))];
        held.iter().all(|h| !h.is_empty()) && common::disjoint_cover(&held, PARTITIONS)
    })
    .await;
    let a_parts = owned_partitions(&env.log_path_named("a"));

    let mut produced = as_set(env.produce(FIRST).await);
    let client = redis.client().await;
    let held_by_a =
        || async { common::buffer_keys(&client, &env.key_prefix, &env.instance_named("a")).await as u64 };
    wait_for("the first wave stored by b or held by a", Duration::from_secs(60), || async {
        env.rows_so_far().await + held_by_a().await == FIRST
    })
    .await;
    // Kafka commits what a holds in Redis: only the adoption can store it now.
    wait_for("kafka committed past what a holds", Duration::from_secs(10), || async {
        committed_sum(&env, &a_parts) == held_by_a().await
    })
    .await;
    let held = held_by_a().await;
    assert!(held > 0, "a must hold records, or the test proves nothing");
    let committed_at_kill = env.committed(KAFKA, PARTITIONS);
    sigkill(&mut a);

    // Newer records of a's partitions: b takes them over at a's commits and stores them.
    produced.extend(env.produce(SECOND).await);
    let newer: Vec<String> = a_parts
        .iter()
        .map(|p| {
            format!(
                "(kafka_partition = {p} AND kafka_offset >= {})",
                committed_at_kill[*p as usize].unwrap_or(0)
            )
        })
        .collect();
    let newer_sql = format!("SELECT COUNT(*) FROM `{}` WHERE {}", env.table, newer.join(" OR "));
    wait_for(
        "newer rows of a's partitions stored while a's buffer waits",
        Duration::from_secs(60),
        || async { env.scalar(&newer_sql).await > 0 },
    )
    .await;
    let newer_rows = env.scalar(&newer_sql).await;
    assert_eq!(
        held_by_a().await,
        held,
        "a's buffer is not adopted yet: its records are older than those rows"
    );

    let total = FIRST + SECOND;
    wait_for("every event stored", Duration::from_secs(90), || async { env.rows_so_far().await >= total })
        .await;
    wait_for("a's buffer adopted", Duration::from_secs(30), || async { held_by_a().await == 0 }).await;
    let status = sigterm(&mut b, Duration::from_secs(30));
    assert!(status.success(), "b exits cleanly, got {status}");
    assert!(
        log_count(&env.log_path_named("b"), "adopted and delivered an orphaned buffer") >= 1,
        "b adopted a's buffer"
    );
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let marks: BTreeMap<i32, i64> = env.watermarks().await;
    let left = common::prefix_keys(&client, &env.key_prefix).await;
    eprintln!(
        "after_buffer orphan: a held {held} of partitions {a_parts:?}; {newer_rows} newer rows stored before the adoption; produced {total}, rows {rows}, distinct {distinct}, watermarks {marks:?}, redis keys left {}",
        left.len()
    );
    assert!(left.is_empty(), "nothing left in Redis: {left:?}");
    env.drop_tables().await;
}
