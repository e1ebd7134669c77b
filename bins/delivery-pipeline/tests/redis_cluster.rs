//! The real binary with its write-ahead buffer on a real three-node Redis Cluster of the
//! test's own (`redis.mode = "cluster"`, AOF with `appendfsync always` on every node): an
//! end-to-end run, SIGKILLs in the middle of a backlog (with the key form switched between
//! runs), and a primary SIGKILLed and restarted from its AOF under `after_buffer`, where Redis
//! is the only copy of what Kafka committed past. Every event is stored exactly once.

mod common;

use std::time::{Duration, Instant};

use common::{TestEnv, as_set, sigkill, sigterm, wait_for};
use dp_buffer_redis::test_support::RedisCluster;

/// `DP_REDIS__*` settings pointing the binary at `cluster`.
fn cluster_settings(cluster: &RedisCluster) -> Vec<(String, String)> {
    vec![
        ("DP_REDIS__MODE".into(), "cluster".into()),
        ("DP_REDIS__URL".into(), cluster.url()),
        ("DP_REDIS__NODES".into(), cluster.other_seeds().join(",")),
    ]
}

fn with<'a>(base: &'a [(String, String)], more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    base.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(more.iter().copied()).collect()
}

/// This test's write-ahead keys on every node, both key forms.
fn buffered(cluster: &RedisCluster, env: &TestEnv) -> usize {
    cluster.count_keys(&format!("{}:buffer:{}:*", env.key_prefix, env.instance))
        + cluster.count_keys(&format!("{}:buffer:{{{}}}:*", env.key_prefix, env.instance))
}

fn log(env: &TestEnv) -> String {
    common::read_log(&env.log_path())
}

async fn assert_exactly_once(env: &TestEnv, produced: &std::collections::BTreeSet<String>) {
    let mut c = env.mysql().await;
    let (rows, distinct): (u64, u64) = mysql_async::prelude::Queryable::query_first(
        &mut c,
        format!("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM `{}`", env.table),
    )
    .await
    .expect("count")
    .expect("one row");
    assert_eq!((rows, distinct), (produced.len() as u64, produced.len() as u64), "no loss, no duplicate");
    assert_eq!(&as_set(env.event_ids().await), produced, "exactly the produced event ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_a_redis_cluster_stores_every_event_once_and_leaves_no_key() {
    const EVENTS: u64 = 20_000;
    let env = TestEnv::new("cluster_e2e");
    let cluster = RedisCluster::start(3);
    env.create_topic(3).await;
    let produced = as_set(env.produce(EVENTS).await);
    let started = Instant::now();
    let settings = cluster_settings(&cluster);
    let mut child = env.spawn(&["run"], &with(&settings, &[]));
    wait_for("every event stored", Duration::from_secs(120), || async { env.rows_so_far().await >= EVENTS })
        .await;
    let stored_after = started.elapsed();
    wait_for("no key left", Duration::from_secs(30), || async { buffered(&cluster, &env) == 0 }).await;
    let status = sigterm(&mut child, Duration::from_secs(30));
    assert!(status.success(), "clean exit, got {status}; log: {}", env.log_path().display());

    let log = log(&env);
    assert!(!log.contains("write-ahead buffer unreachable"), "every append reached the cluster:\n{log}");
    assert!(!log.contains("CROSSSLOT"), "{log}");
    assert_exactly_once(&env, &produced).await;
    eprintln!("{EVENTS} events stored through a 3-node cluster in {stored_after:?}");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_backlog_on_a_cluster_then_restart_with_the_other_key_form_stores_every_event_once() {
    const EVENTS: u64 = 20_000;
    let env = TestEnv::new("cluster_kill");
    let cluster = RedisCluster::start(3);
    env.create_topic(3).await;
    let produced = as_set(env.produce(EVENTS).await);
    let settings = cluster_settings(&cluster);

    // Run 1 stores nothing: the whole backlog ends up in the cluster, spread over every node.
    let mut first = env.spawn(
        &["run"],
        &with(&settings, &[("DP_BUFFER__MAX_ROWS", "100000"), ("DP_BUFFER__FLUSH_INTERVAL", "10m")]),
    );
    wait_for("the backlog in Redis", Duration::from_secs(120), || async {
        buffered(&cluster, &env) as u64 == EVENTS
    })
    .await;
    sigkill(&mut first);
    let pattern = format!("{}:buffer:{}:*", env.key_prefix, env.instance);
    let per_node: Vec<usize> = cluster.nodes().iter().map(|n| n.count_keys(&pattern)).collect();
    assert!(per_node.iter().all(|&n| n > 0), "default keys spread over every node: {per_node:?}");
    assert_eq!(env.row_count().await, 0, "the kill came before any flush");

    // Run 2 switches to hash-tagged keys; it restores the default-form keys and is killed while
    // it writes them.
    let tagged = [("DP_REDIS__HASH_TAG", "true"), ("DP_BUFFER__FLUSH_INTERVAL", "500ms")];
    let mut second = env.spawn(&["run"], &with(&settings, &tagged));
    wait_for("part of the backlog stored", Duration::from_secs(120), || async {
        env.rows_so_far().await >= EVENTS / 3
    })
    .await;
    sigkill(&mut second);
    let (rows_at_kill, keys_at_kill) = (env.row_count().await, buffered(&cluster, &env));
    assert!(rows_at_kill < EVENTS, "killed mid-backlog ({rows_at_kill} rows)");

    // Run 3 finishes.
    let mut third = env.spawn(&["run"], &with(&settings, &tagged));
    wait_for("every event stored", Duration::from_secs(120), || async { env.rows_so_far().await >= EVENTS })
        .await;
    wait_for("no key left", Duration::from_secs(30), || async { buffered(&cluster, &env) == 0 }).await;
    let status = sigterm(&mut third, Duration::from_secs(30));
    assert!(status.success(), "clean exit, got {status}; log: {}", env.log_path().display());
    assert!(
        log(&env).matches("restoring records buffered by an earlier run").count() >= 2,
        "both restarts restored"
    );
    assert_exactly_once(&env, &produced).await;
    eprintln!(
        "run 1 buffered {EVENTS} over nodes {per_node:?}; run 2 killed at {rows_at_kill} rows with {keys_at_kill} keys left"
    );
    env.drop_tables().await;
}

/// Under `after_buffer` Kafka commits past what is in Redis. A primary SIGKILLed and restarted
/// (it reloads its AOF, `appendfsync always`) mid-run, then the pipeline itself SIGKILLed with
/// everything it acknowledged still unstored: the restart finds all of it in the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_buffer_a_primary_restarted_mid_run_loses_nothing_acknowledged() {
    const FIRST: u64 = 6_000;
    const SECOND: u64 = 6_000;
    let env = TestEnv::new("cluster_aof");
    let mut cluster = RedisCluster::start(3);
    env.create_topic(3).await;
    let mut produced = as_set(env.produce(FIRST).await);
    let settings = cluster_settings(&cluster);
    let policy = [
        ("DP_COMMIT_POLICY", "after_buffer"),
        ("DP_KAFKA__COMMIT_INTERVAL", "1s"),
        ("DP_REDIS__COMMAND_TIMEOUT", "1s"),
        // Nothing is stored before the pipeline is killed: what it acknowledged lives in Redis.
        ("DP_BUFFER__MAX_ROWS", "100000"),
        ("DP_BUFFER__FLUSH_INTERVAL", "10m"),
    ];
    let mut first = env.spawn(&["run"], &with(&settings, &policy));
    wait_for("the first events in Redis", Duration::from_secs(120), || async {
        buffered(&cluster, &env) as u64 == FIRST
    })
    .await;

    // More events arrive while primary 1 is killed and restarted.
    let load = env.produce_in_background(SECOND, 1_500);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pattern = format!("{}:buffer:{}:*", env.key_prefix, env.instance);
    let on_node_before = cluster.nodes()[1].count_keys(&pattern);
    cluster.node_mut(1).kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.node_mut(1).restart();
    cluster.wait_until_ok(Duration::from_secs(30));
    let on_node_after = cluster.nodes()[1].count_keys(&pattern);
    assert!(
        on_node_after >= on_node_before,
        "the restarted primary reloaded every acknowledged write: {on_node_before} keys before, {on_node_after} after"
    );
    produced.extend(load.await.expect("load"));
    // Let the Kafka commits (1 s) pass everything that reached Redis, then kill the pipeline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(first.try_wait().expect("wait").is_none(), "the pipeline rode out the primary's restart");
    sigkill(&mut first);
    let held = buffered(&cluster, &env);
    assert_eq!(env.row_count().await, 0, "nothing was stored before the kill");
    assert!(log(&env).contains("write-ahead buffer unreachable"), "the outage hit the appends");

    let mut second = env.spawn(&["run"], &with(&settings, &[("DP_COMMIT_POLICY", "after_buffer")]));
    let total = FIRST + SECOND;
    wait_for("every event stored", Duration::from_secs(120), || async { env.rows_so_far().await >= total })
        .await;
    wait_for("no key left", Duration::from_secs(30), || async { buffered(&cluster, &env) == 0 }).await;
    let status = sigterm(&mut second, Duration::from_secs(30));
    assert!(status.success(), "clean exit, got {status}; log: {}", env.log_path().display());
    assert_exactly_once(&env, &produced).await;
    eprintln!(
        "primary 1 held {on_node_before} keys before its kill, {on_node_after} after its restart; \
         {held} keys in the cluster when the pipeline was killed; {total} stored once"
    );
    env.drop_tables().await;
}
