//! A rolling restart of three instances with SIGTERM, under load: each drains and exits 0
//! within its shutdown timeout, and every event is stored exactly once — on a table without
//! the unique key on `event_id`, so a partition re-read by its next owner would show.

mod common;

use std::time::{Duration, Instant};

use common::{TestEnv, as_set, disjoint_cover, log_count, owned_partitions, sigterm, wait_for};

const PARTITIONS: i32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_three_instances_with_sigterm_loses_and_duplicates_nothing() {
    rolling_restart("rolling", "range,roundrobin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_the_cooperative_sticky_assignor() {
    rolling_restart("rolling_coop", "cooperative-sticky").await;
}

async fn rolling_restart(name: &str, assignor: &str) {
    let env = TestEnv::new(name);
    env.create_topic(PARTITIONS).await;
    env.without_unique_key().await;
    let settings = [
        ("DP_BUFFER__FLUSH_INTERVAL", "1s"),
        ("DP_SHUTDOWN_TIMEOUT", "20s"),
        ("DP_KAFKA__PROPERTIES__PARTITION_ASSIGNMENT_STRATEGY", assignor),
    ];
    let names = ["r1", "r2", "r3"];
    let mut children: Vec<_> = names.iter().map(|n| env.spawn_named(n, &["run"], &settings)).collect();

    const EVENTS: u64 = 30_000;
    let load = env.produce_in_background(EVENTS, 1_000);

    // As Kubernetes does, restart one pod only once the previous one is ready: here, when it
    // holds partitions. (tansu also wedges a group whose member leaves while it is forming.)
    let assigned = "kafka partitions assigned";
    for name in names {
        let log = env.log_path_named(name);
        wait_for(&format!("{name} assigned"), Duration::from_secs(60), || async {
            log_count(&log, assigned) >= 1
        })
        .await;
    }
    wait_for("rows flowing", Duration::from_secs(60), || async { env.rows_so_far().await >= 2_000 }).await;
    for (i, name) in names.iter().enumerate() {
        // Only a settled group loses its next member: every instance holds partitions and
        // together they hold each once (a cooperative rebalance takes two rounds after the
        // restarted member's first assignment; tansu wedges a group left while forming).
        wait_for(&format!("a settled group before restarting {name}"), Duration::from_secs(60), || async {
            let held: Vec<_> = names.iter().map(|n| owned_partitions(&env.log_path_named(n))).collect();
            held.iter().all(|h| !h.is_empty()) && disjoint_cover(&held, PARTITIONS)
        })
        .await;
        let log = env.log_path_named(name);
        let assigned_before = log_count(&log, assigned);
        let started = Instant::now();
        let status = sigterm(&mut children[i], Duration::from_secs(25));
        let took = started.elapsed();
        assert!(status.success(), "{name} must exit 0 on SIGTERM, got {status}");
        eprintln!("{assignor}: {name} exit 0 after {took:?}");
        // The same pod comes back (StatefulSet): same instance id.
        children[i] = env.spawn_named(name, &["run"], &settings);
        wait_for(&format!("restarted {name} assigned"), Duration::from_secs(60), || async {
            log_count(&log, assigned) > assigned_before
        })
        .await;
    }
    let produced = as_set(load.await.expect("load"));
    wait_for("every event stored", Duration::from_secs(120), || async { env.rows_so_far().await >= EVENTS })
        .await;
    for (name, child) in names.iter().zip(children.iter_mut()) {
        let status = sigterm(child, Duration::from_secs(25));
        assert!(status.success(), "{name} must exit 0 at the end, got {status}");
    }
    for name in names {
        assert_eq!(env.redis_keys_named(name).await, 0, "{name} left write-ahead keys");
    }
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let left = env.redis_leftovers().await;
    eprintln!(
        "{assignor}: produced {EVENTS}, rows {rows}, distinct {distinct}, redis keys left {}",
        left.len()
    );
    assert!(left.is_empty(), "nothing left in Redis: {left:?}");
    env.drop_tables().await;
}
