//! The real binary finding its Redis primary through real Sentinels of the test's own
//! (`redis.mode = "sentinel"`), without a failover: every event is stored once, and the
//! write-ahead keys went to the primary the Sentinels name and are gone at the end.

mod common;

use std::time::Duration;

use common::{TestEnv, as_set, sigterm, wait_for};
use dp_buffer_redis::test_support::RedisSentinels;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_through_sentinels_stores_every_event_once() {
    const EVENTS: u64 = 5_000;
    let env = TestEnv::new("sentinel_e2e");
    let sentinels = RedisSentinels::start(2);
    env.create_topic(3).await;
    let produced = as_set(env.produce(EVENTS).await);
    let (url, nodes) = (sentinels.url(), sentinels.other_sentinels().join(","));
    let pattern = format!("{}:buffer:{}:*", env.key_prefix, env.instance);
    // Nothing is flushed before the shutdown: every event is seen buffered on the primary, then
    // the drain stores it and deletes the keys.
    let mut child = env.spawn(
        &["run"],
        &[
            ("DP_REDIS__MODE", "sentinel"),
            ("DP_REDIS__URL", &url),
            ("DP_REDIS__NODES", &nodes),
            ("DP_REDIS__SENTINEL_SERVICE", RedisSentinels::SERVICE),
            ("DP_BUFFER__MAX_ROWS", "10000"),
            ("DP_BUFFER__FLUSH_INTERVAL", "10m"),
        ],
    );
    wait_for("every event buffered on the primary", Duration::from_secs(90), || async {
        sentinels.primary().count_keys(&pattern) as u64 == EVENTS
    })
    .await;
    assert_eq!(env.row_count().await, 0);
    let status = sigterm(&mut child, Duration::from_secs(30));
    assert!(status.success(), "clean exit, got {status}; log: {}", env.log_path().display());
    let log = common::read_log(&env.log_path());
    assert!(!log.contains("write-ahead buffer unreachable"), "every append reached the primary:\n{log}");
    assert_eq!(sentinels.primary().count_keys(&pattern), 0, "the drain deleted every key");
    assert_eq!(env.row_count().await, EVENTS);
    assert_eq!(as_set(env.event_ids().await), produced, "every event exactly once");
    env.drop_tables().await;
}
