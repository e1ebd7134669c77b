//! A Deployment replaces a dead pod under a new name: the dead pod's Redis buffer is adopted
//! by a live instance once its lease expires, so nothing is lost — even under `after_buffer`,
//! where Kafka has already committed past the messages that only Redis holds.

mod common;

use std::time::Duration;

use common::{TestEnv, as_set, sigkill, sigterm, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_buffer_is_adopted_under_a_new_instance_id() {
    let env = TestEnv::new("adoption");
    env.create_topic(4).await;
    // Without the unique key: the adopted records and anything Kafka redelivers must not
    // both be stored (the stored-offset ranges, not a key, keep them apart).
    env.without_unique_key().await;
    let policy = [
        ("DP_COMMIT_POLICY", "after_buffer"),
        ("DP_ALLOW_VOLATILE_BUFFER", "true"), // the shared test Redis has no AOF; it is not restarted here
        ("DP_REDIS__LEASE_TTL", "3s"),
        ("DP_KAFKA__COMMIT_INTERVAL", "1s"),
    ];
    // A never flushes on its own: whatever it consumes stays in Redis (and Kafka commits past it).
    let mut a = env.spawn_named(
        "a",
        &["run"],
        &[&policy[..], &[("DP_BUFFER__FLUSH_INTERVAL", "10m"), ("DP_BUFFER__MAX_ROWS", "100000")]].concat(),
    );
    let mut b =
        env.spawn_named("b", &["run"], &[&policy[..], &[("DP_BUFFER__FLUSH_INTERVAL", "500ms")]].concat());

    // A steady load while the two share the partitions.
    const EVENTS: u64 = 12_000;
    let produced = as_set(env.produce_in_background(EVENTS, 600).await.expect("load"));

    wait_for("every event consumed by A (into Redis) or B (into MySQL)", Duration::from_secs(90), || async {
        env.rows_so_far().await + env.redis_keys_named("a").await as u64 >= EVENTS
    })
    .await;
    let held_by_a = env.redis_keys_named("a").await;
    assert!(held_by_a > 0, "A must hold records in Redis when it is killed, or the test proves nothing");
    // Let A's Kafka commits (1 s interval) pass what it holds: only adoption can save it now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sigkill(&mut a);

    // The replacement comes up under a new id, as a Deployment's pod would.
    let mut c =
        env.spawn_named("c", &["run"], &[&policy[..], &[("DP_BUFFER__FLUSH_INTERVAL", "500ms")]].concat());
    wait_for("every event stored", Duration::from_secs(90), || async { env.rows_so_far().await >= EVENTS })
        .await;
    wait_for("A's buffer emptied", Duration::from_secs(30), || async {
        env.redis_keys_named("a").await == 0
    })
    .await;

    for (name, child) in [("b", &mut b), ("c", &mut c)] {
        let status = sigterm(child, Duration::from_secs(30));
        assert!(status.success(), "{name} exits cleanly, got {status}");
    }
    let logs: String = ["b", "c"].iter().map(|n| common::read_log(&env.log_path_named(n))).collect();
    assert!(logs.contains("adopted and delivered an orphaned buffer"), "B or C must have adopted A's buffer");

    let mut conn = env.mysql().await;
    let (rows, distinct): (u64, u64) = mysql_async::prelude::Queryable::query_first(
        &mut conn,
        format!("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM `{}`", env.table),
    )
    .await
    .expect("count")
    .expect("row");
    eprintln!("A held {held_by_a} records in Redis when killed; rows {rows}, distinct {distinct}");
    assert_eq!((rows, distinct), (EVENTS, EVENTS), "no loss, no duplicate");
    assert_eq!(as_set(env.event_ids().await), produced);
    env.drop_tables().await;
}
