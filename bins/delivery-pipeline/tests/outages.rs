//! Real outages, injected through a TCP proxy of the test's own in front of MariaDB or of a
//! Kafka broker of the test's own (the shared services are never touched): nothing is lost,
//! nothing is stored twice, and the pipeline never has to be restarted by hand.

mod common;

use std::time::{Duration, Instant};

use common::{OwnKafka, Proxy, TestEnv, as_set, log_count, sigterm, wait_for};
use mysql_async::prelude::Queryable;

/// What an instance stored once an outage is over.
struct Outcome {
    produced: std::collections::BTreeSet<String>,
    rows: u64,
    distinct: u64,
    keys: usize,
}

/// After an outage: waits until every one of `events` is stored, checks consumption resumed,
/// stops the instance with SIGTERM (it must exit 0) and counts what is stored and left in Redis.
async fn finish(
    env: &TestEnv,
    child: &mut std::process::Child,
    load: tokio::task::JoinHandle<Vec<String>>,
    events: u64,
) -> Outcome {
    let produced = as_set(load.await.expect("load"));
    wait_for("every event stored", Duration::from_secs(120), || async { env.rows_so_far().await >= events })
        .await;
    assert!(log_count(&env.log_path(), "kafka partitions resumed") >= 1, "consumption resumed");
    let status = sigterm(child, Duration::from_secs(25));
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
    let (rows, distinct) = env.rows_and_distinct().await;
    Outcome { produced, rows, distinct, keys: env.redis_leftovers().await.len() }
}

/// Every produced event stored exactly once, nothing left in Redis.
async fn assert_each_stored_once(env: &TestEnv, o: &Outcome, events: u64) {
    assert_eq!(o.produced.len() as u64, events);
    env.assert_stored_once(&o.produced).await;
    assert_eq!(o.keys, 0, "nothing left in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_down_for_60s_under_steady_load_spills_to_redis_pauses_at_the_limit_then_catches_up() {
    const EVENTS: u64 = 30_000;
    // 300/s × 60 s = 18,000 events arrive during the outage: the limit is reached after ~27 s.
    const LIMIT: usize = 8_000;
    const RATE: u64 = 300;
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    const OUTAGE: Duration = Duration::from_secs(60);
    let env = TestEnv::new("mysql_outage");
    env.create_topic(4).await;
    env.without_unique_key().await;
    let proxy = Proxy::start("127.0.0.1:3306").await;
    let url = format!("mysql://root@127.0.0.1:{}/test", proxy.port);
    let settings = [
        ("DP_MYSQL__URL", url.as_str()),
        ("DP_RETRY__MAX_BACKOFF", "5s"),
        ("DP_BUFFER__FLUSH_INTERVAL", "1s"),
        ("DP_BUFFER__MAX_BUFFERED_ROWS", "8000"),
    ];
    let mut child = env.spawn(&["run"], &settings);
    let load = env.produce_in_background(EVENTS, RATE);
    wait_for("rows flowing", Duration::from_secs(60), || async { env.rows_so_far().await >= 2_000 }).await;

    proxy.cut();
    let cut_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await; // a commit already on the wire may land
    let rows_at_cut = env.row_count().await;
    let revoked_before = log_count(&env.log_path(), "kafka partitions revoked");
    let mut max_keys = 0;
    while cut_at.elapsed() < OUTAGE {
        max_keys = max_keys.max(env.redis_keys().await);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let rows_at_restore = env.row_count().await;
    assert_eq!(rows_at_restore, rows_at_cut, "nothing can be stored while MySQL is unreachable");
    assert!(max_keys <= LIMIT, "the instance holds at most buffer.max_buffered_rows ({max_keys} keys)");
    assert!(
        max_keys >= LIMIT - 2 * 1_000,
        "the pipeline kept consuming into Redis beyond the two batches memory holds ({max_keys} keys)"
    );
    let log = env.log_path();
    assert!(log_count(&log, "holding full batches in Redis only") >= 1, "spilled to Redis");
    assert!(log_count(&log, "buffer limit reached") >= 1, "stopped spilling at the limit");
    assert!(log_count(&log, "kafka partitions paused") >= 1, "consumption paused at the limit");
    assert_eq!(
        log_count(&log, "kafka partitions revoked"),
        revoked_before,
        "the instance kept its partitions through the outage"
    );
    assert!(log_count(&log, "sink failed transiently; retrying") >= 1);

    proxy.restore();
    let restored_at = Instant::now();
    wait_for("rows again", Duration::from_secs(60), || async { env.rows_so_far().await > rows_at_restore })
        .await;
    let recovered = restored_at.elapsed();
    let o = finish(&env, &mut child, load, EVENTS).await;
    eprintln!(
        "mysql outage {OUTAGE:?}: rows at cut {rows_at_cut}, at restore {rows_at_restore}, max redis keys during the outage {max_keys}; first rows {recovered:?} after restore (max backoff {MAX_BACKOFF:?}); produced {}, rows {}, distinct {}, redis keys {}",
        o.produced.len(),
        o.rows,
        o.distinct,
        o.keys
    );
    // Retries back off up to MAX_BACKOFF (with full jitter), then one flush interval; 5 s of slack.
    assert!(recovered <= MAX_BACKOFF + Duration::from_secs(5), "throughput back within one backoff period");
    assert_each_stored_once(&env, &o, EVENTS).await;
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_and_redis_down_together_pause_consumption_and_lose_nothing() {
    const EVENTS: u64 = 20_000;
    const RATE: u64 = 400;
    let env = TestEnv::new("both_down");
    env.create_topic(4).await;
    env.without_unique_key().await;
    let mysql = Proxy::start("127.0.0.1:3306").await;
    let redis = Proxy::start("127.0.0.1:6379").await;
    let mysql_url = format!("mysql://root@127.0.0.1:{}/test", mysql.port);
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let settings = [
        ("DP_MYSQL__URL", mysql_url.as_str()),
        ("DP_REDIS__URL", redis_url.as_str()),
        ("DP_RETRY__MAX_BACKOFF", "2s"),
        ("DP_BUFFER__MAX_BUFFERED_ROWS", "6000"),
    ];
    let mut child = env.spawn(&["run"], &settings);
    let load = env.produce_in_background(EVENTS, RATE);
    wait_for("rows flowing", Duration::from_secs(60), || async { env.rows_so_far().await >= 2_000 }).await;

    // MySQL first: the pipeline spills to Redis beyond the two batches memory holds.
    mysql.cut();
    wait_for("spilling to Redis", Duration::from_secs(40), || async { env.redis_keys().await >= 3_000 })
        .await;
    // Then Redis too: nothing can be spilled or backed up any more; memory fills and Kafka pauses.
    redis.cut();
    let rows_at_cut = env.row_count().await;
    let keys_at_cut = env.redis_keys().await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(child.try_wait().expect("wait").is_none(), "the pipeline must not stop while both are down");
    let log = env.log_path();
    assert_eq!(env.row_count().await, rows_at_cut);
    assert!(log_count(&log, "write-ahead buffer unreachable") >= 1);
    assert!(log_count(&log, "kafka partitions paused") >= 1, "consumption paused");

    // MySQL back while Redis is still cut: the batch in memory is stored; the spilled ones wait
    // for Redis (retried), and nothing after them is stored ahead of them.
    mysql.restore();
    wait_for("spilled read-back retried", Duration::from_secs(30), || async {
        log_count(&log, "reading spilled records back failed; retrying") >= 1
    })
    .await;
    redis.restore();
    let o = finish(&env, &mut child, load, EVENTS).await;
    eprintln!(
        "mysql and redis down: rows at the redis cut {rows_at_cut}, redis keys then {keys_at_cut}; produced {}, rows {}, distinct {}, redis keys left {}",
        o.produced.len(),
        o.rows,
        o.distinct,
        o.keys
    );
    assert_each_stored_once(&env, &o, EVENTS).await;
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_connections_reset_mid_transaction_store_every_event_once() {
    const EVENTS: u64 = 60_000;
    const RESETS: usize = 8;
    let env = TestEnv::new("mysql_reset");
    env.create_topic(4).await;
    // Without the unique key, only the transaction and the offset watermark prevent duplicates.
    env.without_unique_key().await;
    let produced = as_set(env.produce(EVENTS).await);

    let proxy = Proxy::start("127.0.0.1:3306").await;
    let url = format!("mysql://root@127.0.0.1:{}/test", proxy.port);
    let settings = [("DP_MYSQL__URL", url.as_str()), ("DP_RETRY__MAX_BACKOFF", "1s")];
    let mut child = env.spawn(&["run"], &settings);
    let mut at_reset = Vec::new();
    let mut conn = env.mysql().await;
    let count_sql = format!("SELECT COUNT(*) FROM `{}`", env.table);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next = 1_000;
    while at_reset.len() < RESETS && next < EVENTS - 2_000 {
        // Batches of 1000 rows commit back to back while the backlog lasts: a reset right
        // after one commit lands inside the next transaction (or its commit).
        let rows: u64 = conn.query_first(&count_sql).await.ok().flatten().unwrap_or(0);
        if rows < next {
            assert!(Instant::now() < deadline, "no progress ({rows} rows)");
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        proxy.cut();
        at_reset.push(rows);
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.restore();
        next = rows + 3_000;
    }
    drop(conn);
    assert!(at_reset.len() >= RESETS / 2, "too few resets landed before the backlog ran out: {at_reset:?}");
    wait_for("every event stored", Duration::from_secs(120), || async { env.rows_so_far().await >= EVENTS })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = sigterm(&mut child, Duration::from_secs(25));
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
    let (rows, distinct) = env.rows_and_distinct().await;
    let retries = log_count(&env.log_path(), "sink failed transiently; retrying");
    // Failures of a statement inside the transaction (not of getting a connection).
    let log = std::fs::read_to_string(env.log_path()).expect("log");
    let mid_transaction = log
        .lines()
        .filter(|l| l.contains("sink failed transiently") && !l.contains("cannot get a mysql connection"))
        .count();
    let keys = env.redis_leftovers().await.len();
    eprintln!(
        "{} connection resets at rows {at_reset:?}; {retries} transient failures retried, {mid_transaction} of them inside a transaction; produced {EVENTS}, rows {rows}, distinct {distinct}, redis keys {keys}",
        at_reset.len()
    );
    assert!(mid_transaction >= 1, "a reset must land inside a transaction ({retries} retries)");
    assert_eq!((rows, distinct), (EVENTS, EVENTS), "no loss, no duplicate");
    assert_eq!(as_set(env.event_ids().await), produced);
    assert_eq!(keys, 0);
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_for_20s_loses_and_duplicates_nothing() {
    const EVENTS: u64 = 20_000;
    const OUTAGE: Duration = Duration::from_secs(20);
    let env = TestEnv::new("kafka_outage");
    env.without_unique_key().await;
    let listen = common::free_port();
    let proxy = Proxy::start(&format!("127.0.0.1:{listen}")).await;
    let _kafka = OwnKafka::start(listen, &proxy);
    let brokers = format!("127.0.0.1:{}", proxy.port);
    delivery_pipeline::produce::ensure_topic(&brokers, &env.topic, 4).await.expect("topic");

    let opts = delivery_pipeline::produce::ProduceOptions {
        brokers: brokers.clone(),
        topic: env.topic.clone(),
        count: EVENTS,
        rate: Some(400),
        progress: false,
        collect_ids: true,
    };
    let producer_brokers = brokers.clone();
    let load = tokio::spawn(async move {
        let p = delivery_pipeline::produce::producer(&producer_brokers).expect("producer");
        delivery_pipeline::produce::produce(&p, &opts).await.expect("produce")
    });
    let mut child = env.spawn(&["run"], &[("DP_KAFKA__BROKERS", brokers.as_str())]);
    wait_for("rows flowing", Duration::from_secs(60), || async { env.rows_so_far().await >= 3_000 }).await;

    proxy.cut();
    let at_cut = env.row_count().await;
    tokio::time::sleep(OUTAGE).await;
    let at_restore = env.row_count().await;
    proxy.restore();
    let report = load.await.expect("load");
    let produced = as_set(report.event_ids);
    // The producer goes through the cut too: its retries may have written an event twice (two
    // messages, two offsets). Each message must be stored once.
    let messages = common::topic_messages(&brokers, &env.topic, 4);
    wait_for("every message stored", Duration::from_secs(120), || async {
        env.row_count().await >= messages
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = sigterm(&mut child, Duration::from_secs(25));
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
    let (rows, distinct) = env.rows_and_distinct().await;
    let coordinates = env.distinct_coordinates().await;
    let keys = env.redis_leftovers().await.len();
    eprintln!(
        "kafka unreachable {OUTAGE:?}: rows at cut {at_cut}, at restore {at_restore} (buffered rows flushed during the outage); produced {} events as {messages} messages, rows {rows}, distinct event ids {distinct}, distinct coordinates {coordinates}, redis keys {keys}",
        produced.len()
    );
    assert_eq!(produced.len() as u64, EVENTS);
    assert_eq!((rows, coordinates), (messages, messages), "each message stored once");
    assert_eq!(distinct, EVENTS, "no event lost");
    assert_eq!(as_set(env.event_ids().await), produced);
    assert_eq!(env.dead_letters().await, 0);
    assert_eq!(keys, 0);
    env.drop_tables().await;
}
