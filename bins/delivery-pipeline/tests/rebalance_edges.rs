//! The edges of a consumer-group rebalance, on tables without the unique key on `event_id` (any
//! record stored twice shows): a sink slower than `kafka.revocation_timeout`, a member that
//! stops past its session timeout and comes back (a zombie, whose assignment was lost), and a
//! group whose Kafka offsets are rewound below what is stored.

mod common;

use std::time::Duration;

use common::{KAFKA, TestEnv, final_stats, log_count, sigterm, wait_for};
use mysql_async::prelude::Queryable;

const PARTITIONS: i32 = 4;

fn send(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().expect("kill");
    assert!(ok.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_slower_than_the_revocation_timeout_lets_go_uncommitted_and_nothing_is_stored_twice() {
    let env = TestEnv::new("revoke_timeout");
    env.create_topic(PARTITIONS).await;
    env.without_unique_key().await;
    let produced = common::as_set(env.produce(2_500).await);
    // a stores two full batches and holds the last 500 (300 s interval); nothing is committed.
    let settings = [("DP_BUFFER__FLUSH_INTERVAL", "300s"), ("DP_KAFKA__COMMIT_INTERVAL", "300s")];
    let mut a = env.spawn_named("a", &["run"], &settings);
    wait_for("two full batches from a", Duration::from_secs(60), || async {
        env.rows_so_far().await >= 2_000
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.row_count().await, 2_000, "500 events wait in a's buffer");

    // Lock the group's watermark rows: any write of a batch now waits (InnoDB waits 50 s).
    let mut lock = env.mysql().await;
    let mut tx = lock.start_transaction(mysql_async::TxOpts::default()).await.expect("begin");
    let locked: Vec<(i32, i64)> = tx
        .exec(
            "SELECT kafka_partition, next_offset FROM pipeline_offsets WHERE consumer_group = ? FOR UPDATE",
            (&env.group,),
        )
        .await
        .expect("lock the watermark rows");
    assert_eq!(locked.len(), PARTITIONS as usize);

    // b joins: a must hand over, but its flush cannot finish within the revocation timeout (3 s).
    let mut b = env.spawn_named("b", &["run"], &[("DP_BUFFER__FLUSH_INTERVAL", "1s")]);
    let a_log = env.log_path_named("a");
    wait_for("a lets go without committing", Duration::from_secs(30), || async {
        log_count(&a_log, "not delivered within kafka.revocation_timeout") >= 1
    })
    .await;
    wait_for("b assigned", Duration::from_secs(30), || async {
        log_count(&env.log_path_named("b"), "kafka partitions assigned") >= 1
    })
    .await;
    // b re-reads what a held of its partitions; its write waits on the same lock.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.row_count().await, 2_000, "nothing stored while the watermark rows are locked");
    tx.rollback().await.expect("release the lock");
    drop(lock);

    wait_for("every event stored", Duration::from_secs(60), || async { env.rows_so_far().await >= 2_500 })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, child) in [("a", &mut a), ("b", &mut b)] {
        let status = sigterm(child, Duration::from_secs(25));
        assert!(status.success(), "{name} must exit 0, got {status}");
    }
    let (a_stats, b_stats) = (final_stats(&a_log), final_stats(&env.log_path_named("b")));
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let left = env.redis_leftovers().await;
    eprintln!(
        "revocation timeout: produced 2500, rows {rows}, distinct {distinct}, redis keys left {}; a {a_stats:?}; b {b_stats:?}",
        left.len()
    );
    assert!(left.is_empty(), "nothing left in Redis: {left:?}");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_whose_assignment_was_lost_stores_nothing_twice_and_moves_nothing_backwards() {
    const FIRST: u64 = 3_500;
    const SECOND: u64 = 2_000;
    const HELD: u64 = 500;
    let env = TestEnv::new("zombie");
    env.create_topic(PARTITIONS).await;
    env.without_unique_key().await;
    let mut produced = common::as_set(env.produce(FIRST).await);
    // a stores three full batches of the first wave without committing them to Kafka (300 s
    // commit interval: its offsets are only stored in the client), and holds the last 500.
    let hold = [("DP_BUFFER__FLUSH_INTERVAL", "10m"), ("DP_KAFKA__COMMIT_INTERVAL", "300s")];
    let mut a = env.spawn_named("a", &["run"], &hold);
    wait_for("a stores 3,000 and holds 500", Duration::from_secs(60), || async {
        env.rows_so_far().await == FIRST - HELD && env.redis_keys_named("a").await == HELD as usize
    })
    .await;
    assert_eq!(env.committed(KAFKA, PARTITIONS), vec![None; PARTITIONS as usize], "a committed nothing yet");
    let pid = a.id();
    send(pid, "-STOP");

    // b takes every partition once a's session (6 s) times out, starts at the watermarks, and
    // stores the rest of both waves.
    let mut b = env.spawn_named("b", &["run"], &[("DP_BUFFER__FLUSH_INTERVAL", "500ms")]);
    produced.extend(env.produce(SECOND).await);
    let total = FIRST + SECOND;
    wait_for("b stored both waves", Duration::from_secs(90), || async { env.rows_so_far().await >= total })
        .await;
    wait_for("b committed", Duration::from_secs(30), || async {
        env.committed(KAFKA, PARTITIONS).iter().flatten().sum::<i64>() == total as i64
    })
    .await;
    let marks_before = env.watermarks().await;
    let committed_before = env.committed(KAFKA, PARTITIONS);

    // a comes back: its assignment was lost. It must commit nothing for it (its stored offsets
    // are behind b's commits), and its late batch (written at the latest by its drain) must
    // store nothing and lower no watermark.
    send(pid, "-CONT");
    let a_log = env.log_path_named("a");
    wait_for("a learns its assignment was lost", Duration::from_secs(30), || async {
        log_count(&a_log, "assignment lost") >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = sigterm(&mut a, Duration::from_secs(30));
    assert!(status.success(), "a exits cleanly, got {status}");
    let a_stats = final_stats(&a_log);
    assert!(
        a_stats["duplicates"] >= HELD,
        "a wrote its late batch, and the sink found every record stored: {a_stats:?}"
    );
    let marks_after = env.watermarks().await;
    let committed_after = env.committed(KAFKA, PARTITIONS);
    for p in 0..PARTITIONS {
        assert!(
            marks_after[&p] >= marks_before[&p],
            "watermark of {p} moved backwards: {marks_before:?} → {marks_after:?}"
        );
        assert!(
            committed_after[p as usize] >= committed_before[p as usize],
            "committed offset of {p} moved backwards: {committed_before:?} → {committed_after:?}"
        );
    }
    let status = sigterm(&mut b, Duration::from_secs(30));
    assert!(status.success(), "b exits cleanly, got {status}");
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let left = env.redis_leftovers().await;
    eprintln!(
        "zombie: a held {HELD}; produced {total}, rows {rows}, distinct {distinct}, redis keys left {}; watermarks {marks_before:?} → {marks_after:?}; committed {committed_before:?} → {committed_after:?}; a {a_stats:?}",
        left.len()
    );
    assert!(left.is_empty(), "nothing left in Redis: {left:?}");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_rewound_to_the_earliest_restart_every_partition_at_its_watermark() {
    const FIRST: u64 = 5_000;
    const SECOND: u64 = 1_000;
    let env = TestEnv::new("rewind");
    env.create_topic(PARTITIONS).await;
    env.without_unique_key().await;
    let mut produced = common::as_set(env.produce(FIRST).await);
    let mut first = env.spawn(&["run"], &[]);
    wait_for("the first wave stored", Duration::from_secs(60), || async { env.rows_so_far().await >= FIRST })
        .await;
    assert!(sigterm(&mut first, Duration::from_secs(30)).success());
    assert_eq!(env.committed(KAFKA, PARTITIONS).iter().flatten().sum::<i64>(), FIRST as i64);

    // What `kafka-consumer-groups --reset-offsets --to-earliest` does: commit offset 0.
    rewind_to_earliest(&env);
    assert_eq!(env.committed(KAFKA, PARTITIONS), vec![Some(0); PARTITIONS as usize], "rewound");
    let marks = env.watermarks().await;

    let log = env.log_path();
    let starts_before = log_count(&log, "partition starts at the stored watermark");
    let mut second = env.spawn(&["run"], &[]);
    wait_for("every partition started at its watermark", Duration::from_secs(60), || async {
        log_count(&log, "partition starts at the stored watermark") >= starts_before + PARTITIONS as usize
    })
    .await;
    // Nothing new arrived, yet Kafka's offsets move to the watermarks: its lag is true.
    let expected: Vec<Option<i64>> = (0..PARTITIONS).map(|p| marks.get(&p).copied()).collect();
    wait_for("the watermarks committed as start positions", Duration::from_secs(20), || async {
        env.committed(KAFKA, PARTITIONS) == expected
    })
    .await;
    produced.extend(env.produce(SECOND).await);
    let total = FIRST + SECOND;
    wait_for("the second wave stored", Duration::from_secs(60), || async {
        env.rows_so_far().await >= total
    })
    .await;
    assert!(sigterm(&mut second, Duration::from_secs(30)).success());
    let stats = final_stats(&log);
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    eprintln!(
        "rewind: watermarks {marks:?}; produced {total}, rows {rows}, distinct {distinct}; after the rewind {stats:?}"
    );
    assert_eq!(stats["consumed"], SECOND, "nothing below the watermark was read again");
    env.drop_tables().await;
}

/// Commits offset 0 for every partition of the test's topic in the test's group.
fn rewind_to_earliest(env: &TestEnv) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", &env.group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&env.topic, p, rdkafka::Offset::Offset(0)).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    consumer.commit(&tpl, CommitMode::Sync).expect("commit offset 0");
}
