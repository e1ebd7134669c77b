//! Delivery guarantees under faults of the stores: Redis down, unsafe commit policies.

mod common;

use std::time::{Duration, Instant};

use common::{OwnRedis, TestEnv, as_set, free_port, sigterm, wait_for};
use dp_pipeline::CommitPolicy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_for_20s_mid_run_loses_nothing_and_the_pipeline_keeps_going() {
    let env = TestEnv::new("redis_down");
    env.create_topic(3).await;
    env.without_unique_key().await;
    let mut redis = OwnRedis::start(free_port());
    let url = redis.url();
    let extra = [
        ("DP_REDIS__URL", url.as_str()),
        ("DP_REDIS__COMMAND_TIMEOUT", "1s"),
        ("DP_BUFFER__FLUSH_INTERVAL", "500ms"),
    ];
    let mut child = env.spawn(&["run"], &extra);

    // Steady load: 1,000 events/s for 40 s.
    const EVENTS: u64 = 40_000;
    let load = env.produce_in_background(EVENTS, 1_000);

    wait_for("rows flowing before the outage", Duration::from_secs(60), || async {
        env.rows_so_far().await >= 3_000
    })
    .await;
    redis.kill();
    let at_kill = env.row_count().await;
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let at_restart = env.row_count().await;
    assert!(child.try_wait().expect("wait").is_none(), "the pipeline must not stop while Redis is down");
    assert!(
        at_restart >= at_kill + 10_000,
        "rows must keep flowing during the outage: {at_kill} at the kill, {at_restart} {:?} later",
        outage.elapsed()
    );
    redis.restart();

    let produced = as_set(load.await.expect("load task"));
    wait_for("every event stored", Duration::from_secs(90), || async { env.rows_so_far().await >= EVENTS })
        .await;
    // Backups resumed: new records went to the restarted Redis, and were deleted once delivered.
    let client = redis.client().await;
    let pattern = format!("{}:buffer:{}:*", env.key_prefix, env.instance);
    wait_for("own Redis emptied", Duration::from_secs(30), || async {
        use futures::TryStreamExt as _;
        let keys: Vec<fred::types::Key> =
            client.scan_buffered(pattern.clone(), Some(1000), None).try_collect().await.expect("scan");
        keys.is_empty()
    })
    .await;
    let status = sigterm(&mut child, Duration::from_secs(30));
    assert!(status.success(), "clean exit, got {status}");
    let log = common::read_log(&env.log_path());
    assert!(log.contains("write-ahead buffer unreachable"), "the outage is logged");
    assert!(log.contains("write-ahead buffer reachable again"), "the recovery is logged");

    let (rows, distinct) = env.assert_stored_once(&produced).await;
    eprintln!(
        "rows at kill {at_kill}, after 20 s of outage {at_restart}; produced {EVENTS}, rows {rows}, distinct {distinct}"
    );
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_buffer_refuses_a_redis_that_does_not_persist() {
    let env = TestEnv::new("after_buffer_check");
    // The shared Redis runs with appendonly no.
    let mut config = env.config();
    config.commit_policy = CommitPolicy::AfterBuffer;
    let err = dp_assembly::build(&config).await.err().expect("must refuse");
    let msg = err.to_string();
    assert!(msg.starts_with("commit_policy: after_buffer needs a Redis that persists writes"), "{msg}");
    assert!(msg.contains("appendonly=no"), "{msg}");
    config.allow_volatile_buffer = true;
    assert!(dp_assembly::build(&config).await.is_ok(), "the explicit override is honoured");
    env.drop_tables().await;
}
