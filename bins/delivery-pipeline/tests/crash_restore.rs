//! A process killed with SIGKILL while its buffer holds messages loses nothing.

mod common;

use std::time::Duration;

use common::{TestEnv, as_set, sigkill, sigterm, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_before_the_flush_then_restart_stores_every_message_once() {
    let env = TestEnv::new("crash_restore");
    env.create_topic(3).await;
    let produced = as_set(env.produce(3_000).await);

    // A buffer larger than the backlog and a long interval: nothing is flushed before the kill.
    let mut first =
        env.spawn(&["run"], &[("DP_BUFFER__MAX_ROWS", "10000"), ("DP_BUFFER__FLUSH_INTERVAL", "10m")]);
    wait_for("all 3000 messages in Redis", Duration::from_secs(90), || async {
        env.redis_keys().await == 3_000
    })
    .await;
    sigkill(&mut first);
    assert_eq!(env.row_count().await, 0, "the kill came before any flush");
    assert_eq!(env.redis_keys().await, 3_000, "the write-ahead copies survive the kill");

    // Same instance id: restore on boot, then Kafka redelivers (offsets were never committed)
    // and the idempotent insert absorbs the overlap.
    let mut second = env.spawn(&["run"], &[]);
    wait_for("3000 rows in MySQL", Duration::from_secs(90), || async { env.row_count().await >= 3_000 })
        .await;
    wait_for("Redis emptied", Duration::from_secs(30), || async { env.redis_keys().await == 0 }).await;
    let status = sigterm(&mut second, Duration::from_secs(30));
    assert!(status.success(), "clean exit on SIGTERM, got {status}; log: {}", env.log_path().display());

    assert_eq!(env.row_count().await, 3_000);
    assert_eq!(as_set(env.event_ids().await), produced, "every message exactly once");
    assert_eq!(env.redis_keys().await, 0);
    let log = std::fs::read_to_string(env.log_path()).unwrap_or_default();
    assert!(log.contains("restoring records buffered by an earlier run"), "restore must run on boot:\n{log}");
    env.drop_tables().await;
}
