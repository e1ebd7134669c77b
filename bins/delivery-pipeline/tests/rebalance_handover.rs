//! Revocation is a hand-over: when a second member joins, the first one delivers what it holds
//! of the partitions it gives up and commits them before letting them go, long before its own
//! flush interval or commit interval would have.

mod common;

use std::time::Duration;

use common::{KAFKA, TestEnv, as_set, log_count, sigterm, wait_for};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;

/// Sum over the topic's partitions of the group's committed offsets (none counts 0).
fn committed_total(env: &TestEnv) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", &env.group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(&env.topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_partitions_are_delivered_and_committed_before_they_move() {
    handover("handover", "range,roundrobin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hand_over_works_with_the_cooperative_sticky_assignor() {
    handover("handover_coop", "cooperative-sticky").await;
}

async fn handover(name: &str, assignor: &str) {
    let env = TestEnv::new(name);
    env.create_topic(PARTITIONS).await;
    // Without the unique key, a record that b re-read and stored again would show.
    env.without_unique_key().await;
    // Neither the flush interval nor the commit interval can explain what follows.
    let settings = [
        ("DP_BUFFER__FLUSH_INTERVAL", "300s"),
        ("DP_KAFKA__COMMIT_INTERVAL", "300s"),
        ("DP_KAFKA__PROPERTIES__PARTITION_ASSIGNMENT_STRATEGY", assignor),
    ];
    let produced = as_set(env.produce(2_500).await);

    let mut a = env.spawn_named("a", &["run"], &settings);
    wait_for("two full batches from a", Duration::from_secs(60), || async {
        env.rows_so_far().await >= 2_000
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.row_count().await, 2_000, "500 events wait in a's buffer for the 300 s interval");
    let before = committed_total(&env);
    assert!(before < 2_500, "nothing commits the last events yet (committed {before})");

    let mut b = env.spawn_named("b", &["run"], &settings);
    let a_log = env.log_path_named("a");
    wait_for("a hands its partitions over", Duration::from_secs(30), || async {
        log_count(&a_log, "revoked partitions delivered and committed") >= 1
    })
    .await;
    assert_eq!(env.row_count().await, 2_500, "a delivered what it held before letting go");
    assert_eq!(committed_total(&env), 2_500, "and committed it, so b reads nothing again");
    assert_eq!(log_count(&a_log, "not delivered within"), 0);
    wait_for("b assigned", Duration::from_secs(30), || async {
        log_count(&env.log_path_named("b"), "kafka partitions assigned") >= 1
    })
    .await;

    for (name, child) in [("a", &mut a), ("b", &mut b)] {
        let status = sigterm(child, Duration::from_secs(25));
        assert!(status.success(), "{name} must exit 0, got {status}");
        assert_eq!(env.redis_keys_named(name).await, 0, "{name} left write-ahead keys");
    }
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let left = env.redis_leftovers().await;
    eprintln!("{assignor}: produced 2500, rows {rows}, distinct {distinct}, redis keys left {}", left.len());
    assert!(left.is_empty(), "nothing left in Redis: {left:?}");
    env.drop_tables().await;
}
