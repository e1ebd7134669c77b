//! What a dead process left in Redis is stored by the next one — from Redis alone.
//!
//! Under the default `after_sink` policy Kafka redelivers whatever was not stored, so a restore
//! (or an adoption) that stored nothing would still end with every row in place. Here the
//! instance that restores or adopts cannot reach Kafka at all: only the write-ahead copies can
//! put the rows there. Every table is without the unique key on `event_id`, so a record stored
//! by the restore and again after Kafka comes back would show. One buffer is compressed with a
//! zstd dictionary and adopted by an instance that never had it.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{
    OwnRedis, Proxy, TestEnv, as_set, free_port, read_log, sigkill, sigterm, unreachable_kafka, wait_for,
};

/// Events in the backlog each test starts with.
const EVENTS: u64 = 3_000;

/// Settings of an instance that never flushes on its own: whatever it consumes stays in memory
/// and in Redis until it dies.
const HOLD: [(&str, &str); 2] = [("DP_BUFFER__MAX_ROWS", "100000"), ("DP_BUFFER__FLUSH_INTERVAL", "10m")];

/// Produces the backlog, runs an instance (named `name`) until it holds all of it in Redis,
/// and SIGKILLs it. Returns the produced event ids.
async fn kill_holding_everything(env: &TestEnv, name: &str, extra: &[(&str, &str)]) -> BTreeSet<String> {
    env.create_topic(3).await;
    env.without_unique_key().await;
    let produced = as_set(env.produce(EVENTS).await);
    let mut first = env.spawn_named(name, &["run"], &[&HOLD[..], extra].concat());
    wait_for("the whole backlog in Redis", Duration::from_secs(90), || async {
        env.redis_keys_named(name).await == EVENTS as usize
    })
    .await;
    sigkill(&mut first);
    assert_eq!(env.row_count().await, 0, "the kill came before any flush");
    assert_eq!(env.redis_keys_named(name).await, EVENTS as usize, "the write-ahead copies survive the kill");
    produced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_stores_what_redis_holds_before_consuming_even_without_kafka() {
    let env = TestEnv::new("crash_restore");
    let produced = kill_holding_everything(&env, "a", &[]).await;

    // The same instance id, with Kafka out of reach: the rows can only come from Redis.
    let nowhere = unreachable_kafka();
    let mut second = env.spawn_named("a", &["run"], &[("DP_KAFKA__BROKERS", nowhere.as_str())]);
    wait_for("the restored rows", Duration::from_secs(60), || async { env.rows_so_far().await >= EVENTS })
        .await;
    wait_for("Redis emptied", Duration::from_secs(30), || async { env.redis_keys_named("a").await == 0 })
        .await;
    let log = read_log(&env.log_path_named("a"));
    assert!(log.contains("restoring records buffered by an earlier run"), "restore must run on boot:\n{log}");
    env.assert_stored_once(&produced).await;
    let status = sigterm(&mut second, Duration::from_secs(30));
    assert!(status.success(), "clean exit on SIGTERM without Kafka, got {status}");

    // Kafka back: nothing was committed to it, so the group reads the topic from the start; the
    // watermark the restore raised must keep every record from being stored twice.
    let mut third = env.spawn_named("a", &["run"], &[]);
    wait_for("partitions assigned", Duration::from_secs(60), || async {
        common::log_count(&env.log_path_named("a"), "kafka partitions assigned") >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = sigterm(&mut third, Duration::from_secs(30));
    assert!(status.success(), "clean exit, got {status}");
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let left = env.redis_leftovers().await;
    eprintln!(
        "restore without kafka: held {EVENTS}, rows {rows}, distinct {distinct}, redis keys left {}",
        left.len()
    );
    assert!(left.is_empty(), "nothing left in Redis: {left:?}");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_buffer_is_adopted_under_a_new_id_even_without_kafka() {
    let env = TestEnv::new("adopt_alone");
    let lease = [("DP_REDIS__LEASE_TTL", "3s")];
    let produced = kill_holding_everything(&env, "dead", &lease).await;

    // A replacement under a new name (a Deployment's pod), with Kafka out of reach.
    let nowhere = unreachable_kafka();
    let mut heir = env.spawn_named("heir", &["run"], &[lease[0], ("DP_KAFKA__BROKERS", nowhere.as_str())]);
    wait_for("the adopted rows", Duration::from_secs(60), || async { env.rows_so_far().await >= EVENTS })
        .await;
    wait_for("the dead buffer emptied", Duration::from_secs(30), || async {
        env.redis_keys_named("dead").await == 0
    })
    .await;
    let log = read_log(&env.log_path_named("heir"));
    assert!(log.contains("adopted and delivered an orphaned buffer"), "the heir must adopt:\n{log}");
    let status = sigterm(&mut heir, Duration::from_secs(30));
    assert!(status.success(), "clean exit on SIGTERM without Kafka, got {status}");
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let left = env.redis_leftovers().await;
    eprintln!(
        "adoption without kafka: held {EVENTS}, rows {rows}, distinct {distinct}, redis keys left {}",
        left.len()
    );
    assert!(left.is_empty(), "nothing left in Redis: {left:?}");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_compressed_with_a_dictionary_is_adopted_by_an_instance_that_never_had_it() {
    let env = TestEnv::new("adopt_dict");
    env.create_topic(3).await;
    env.without_unique_key().await;
    let lease = ("DP_REDIS__LEASE_TTL", "3s");
    let dictionary = [lease, ("DP_REDIS__COMPRESSION", "zstd-dictionary")];
    // 2,500 events, of which it trains its dictionary on the first 2,000; then 500 more, which
    // it compresses with it. It holds all of them when it is killed.
    let mut produced = as_set(env.produce(2500).await);
    let mut dead = env.spawn_named("dead", &["run"], &[&HOLD[..], &dictionary[..]].concat());
    wait_for("the dictionary trained", Duration::from_secs(90), || async {
        common::log_count(&env.log_path_named("dead"), "compressed with a zstd dictionary") >= 1
    })
    .await;
    produced.extend(as_set(env.produce(EVENTS - 2500).await));
    wait_for("the whole backlog in Redis", Duration::from_secs(90), || async {
        env.redis_keys_named("dead").await == EVENTS as usize
    })
    .await;
    sigkill(&mut dead);
    assert_eq!(env.row_count().await, 0, "the kill came before any flush");

    let redis = env.redis().await;
    let mut versions = std::collections::BTreeMap::<u8, usize>::new();
    for key in common::prefix_keys(&redis, &env.key_prefix).await.iter().filter(|k| k.contains(":buffer:")) {
        let value: Vec<u8> = fred::prelude::KeysInterface::get(&redis, key.as_str()).await.expect("GET");
        *versions.entry(value[0]).or_default() += 1;
    }
    eprintln!("held by format version: {versions:?}");
    // Which of the first 2,500 came after the training depends on how Kafka chunked them.
    let by_version = |v: u8| versions.get(&v).copied().unwrap_or(0);
    let (alone, with) =
        (by_version(dp_core::FORMAT_VERSION_ZSTD), by_version(dp_core::FORMAT_VERSION_ZSTD_DICT));
    assert!(
        alone >= 2000 && with >= 500 && alone + with == EVENTS as usize,
        "zstd alone before the dictionary, with it after: {versions:?}"
    );

    // A replacement without compression (it never trained or loaded a dictionary), Kafka out of
    // reach: the rows can only come from Redis, decoded with the dictionary stored there.
    let nowhere = unreachable_kafka();
    let mut heir = env.spawn_named("heir", &["run"], &[lease, ("DP_KAFKA__BROKERS", nowhere.as_str())]);
    wait_for("the adopted rows", Duration::from_secs(60), || async { env.rows_so_far().await >= EVENTS })
        .await;
    let status = sigterm(&mut heir, Duration::from_secs(30));
    assert!(status.success(), "clean exit on SIGTERM without Kafka, got {status}");
    env.assert_stored_once(&produced).await;
    // Only the dictionary is left: the pipeline never deletes one.
    let mut left = env.redis_leftovers().await;
    left.sort();
    let prefix = &env.key_prefix;
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[0], format!("{prefix}:dictionary"), "{left:?}");
    assert!(left[1].starts_with(&format!("{prefix}:dictionary:")), "{left:?}");
    let _: () = fred::prelude::KeysInterface::del(&redis, left).await.expect("DEL");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stores_what_the_instance_holds_commits_it_and_exits_0() {
    let env = TestEnv::new("drain");
    env.create_topic(3).await;
    env.without_unique_key().await;
    let produced = as_set(env.produce(EVENTS).await);
    let mut child = env.spawn(&["run"], &HOLD);
    wait_for("the whole backlog held", Duration::from_secs(90), || async {
        env.redis_keys().await == EVENTS as usize
    })
    .await;
    assert_eq!(env.row_count().await, 0, "nothing stored before the signal");
    let status = sigterm(&mut child, Duration::from_secs(30));
    assert!(status.success(), "the drain exits 0, got {status}");
    // Checked at once, before anything else runs: the drain itself stored, committed, cleaned up.
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let committed: i64 = env.committed(common::KAFKA, 3).iter().flatten().sum();
    let left = env.redis_leftovers().await;
    eprintln!(
        "drain: held {EVENTS}; rows {rows}, distinct {distinct}, committed {committed}, redis keys left {}",
        left.len()
    );
    assert_eq!(committed, EVENTS as i64, "the drain committed what it stored");
    assert!(left.is_empty(), "the drain deleted its keys and its lease: {left:?}");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_the_next_start_restores_what_was_held() {
    let env = TestEnv::new("second_signal");
    env.create_topic(3).await;
    env.without_unique_key().await;
    let produced = as_set(env.produce(EVENTS).await);
    let mysql = Proxy::start("127.0.0.1:3306").await;
    let url = format!("mysql://root@127.0.0.1:{}/test", mysql.port);
    let mut child = env.spawn(&["run"], &[&HOLD[..], &[("DP_MYSQL__URL", url.as_str())]].concat());
    wait_for("the whole backlog in Redis", Duration::from_secs(90), || async {
        env.redis_keys().await == EVENTS as usize
    })
    .await;

    // MySQL unreachable: the drain that the first SIGTERM starts can only retry.
    mysql.cut();
    let pid = child.id().to_string();
    let term = || {
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success())
    };
    term();
    wait_for("the drain retrying", Duration::from_secs(20), || async {
        common::log_count(&env.log_path(), "sink failed transiently; retrying") >= 1
    })
    .await;
    assert!(child.try_wait().expect("wait").is_none(), "the first signal drains; it does not exit");
    term();
    let second = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(second.elapsed() < Duration::from_secs(3), "the second signal must exit at once");
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("second signal: exit {status} after {:?}", second.elapsed());
    assert_eq!(status.code(), Some(130), "a second signal exits with 130");
    assert_eq!(env.row_count().await, 0, "nothing was stored");
    assert_eq!(env.redis_keys().await, EVENTS as usize, "Redis still holds the whole buffer");

    // The next start, MySQL reachable and Kafka not: the held records come from Redis.
    let nowhere = unreachable_kafka();
    let mut next = env.spawn(&["run"], &[("DP_KAFKA__BROKERS", nowhere.as_str())]);
    wait_for("the restored rows", Duration::from_secs(60), || async { env.rows_so_far().await >= EVENTS })
        .await;
    wait_for("Redis emptied", Duration::from_secs(30), || async { env.redis_keys().await == 0 }).await;
    let status = sigterm(&mut next, Duration::from_secs(30));
    assert!(status.success(), "clean exit, got {status}");
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    eprintln!("second signal: held {EVENTS}; restored rows {rows}, distinct {distinct}");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_with_the_process_loses_nothing_under_after_sink() {
    // Rule 7: under after_sink, Redis only speeds a restart up. Three times, the process and its
    // Redis die together while it holds records it has not stored (the part of a backlog short
    // of a full batch, waiting for a 10-minute interval), after Kafka had every chance to commit
    // (every second): only what was stored may have been committed.
    const CHUNK: u64 = 7_300;
    const ROUNDS: u64 = 3;
    let env = TestEnv::new("redis_lost");
    env.create_topic(4).await;
    env.without_unique_key().await;
    let mut redis = OwnRedis::start(free_port());
    let url = redis.url();
    let settings = [
        ("DP_REDIS__URL", url.as_str()),
        ("DP_KAFKA__COMMIT_INTERVAL", "1s"),
        ("DP_BUFFER__FLUSH_INTERVAL", "10m"),
    ];
    let mut produced = BTreeSet::new();
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        produced.extend(env.produce(CHUNK).await);
        let total = produced.len() as u64;
        let mut child = env.spawn(&["run"], &settings);
        let client = redis.client().await;
        let held = || async { common::buffer_keys(&client, &env.key_prefix, &env.instance).await as u64 };
        wait_for(&format!("round {round}: everything stored or held"), Duration::from_secs(60), || async {
            let h = held().await;
            h > 0 && env.rows_so_far().await + h == total
        })
        .await;
        tokio::time::sleep(Duration::from_millis(2_500)).await; // commit intervals pass
        let (rows, held) = (env.row_count().await, held().await);
        sigkill(&mut child);
        redis.kill();
        redis.restart(); // without persistence: empty
        rounds.push((rows, held));
        assert!(rows + held == total && held > 0, "round {round}: {rows} stored and {held} held of {total}");
    }
    let mut last = env.spawn(&["run"], &[settings[0], ("DP_BUFFER__FLUSH_INTERVAL", "500ms")]);
    let total = CHUNK * ROUNDS;
    wait_for("every event stored", Duration::from_secs(120), || async { env.rows_so_far().await >= total })
        .await;
    let status = sigterm(&mut last, Duration::from_secs(30));
    assert!(status.success(), "clean exit, got {status}");
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let client = redis.client().await;
    let left = common::prefix_keys(&client, &env.key_prefix).await;
    eprintln!(
        "redis lost with the process: (rows at kill, records held in the lost redis) {rounds:?}; produced {total}, rows {rows}, distinct {distinct}, redis keys left {}",
        left.len()
    );
    assert!(left.is_empty(), "nothing left in Redis: {left:?}");
    env.drop_tables().await;
}
