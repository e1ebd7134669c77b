//! Network paths that go silent: no data, no FIN, no RST — a dead node, a NAT or firewall that
//! dropped its state. TCP reports nothing, so only the pipeline's own deadlines can notice. A
//! proxy of the test's own stops forwarding while keeping both sockets open, and closes the
//! server's side some seconds later, as a server that notices a dead client does. Tables have
//! no unique key on `event_id`: a batch retried after its commit reached the server would show.

mod common;

use std::time::{Duration, Instant};

use common::{Proxy, TestEnv, as_set, log_count, sigterm, wait_for};

/// Settings of a pipeline writing to MySQL through `proxy`, with short deadlines.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

fn mysql_through(proxy: &Proxy) -> String {
    format!("mysql://root@127.0.0.1:{}/test", proxy.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mysql_connection_silent_mid_stream_is_given_up_and_the_pipeline_recovers() {
    const EVENTS: u64 = 24_000;
    const SILENCE: Duration = Duration::from_secs(20);
    let env = TestEnv::new("mysql_silent");
    env.create_topic(4).await;
    env.without_unique_key().await;
    let proxy = Proxy::start("127.0.0.1:3306").await;
    let url = mysql_through(&proxy);
    let settings = [
        ("DP_MYSQL__URL", url.as_str()),
        ("DP_MYSQL__QUERY_TIMEOUT", "5s"),
        ("DP_MYSQL__CONNECT_TIMEOUT", "3s"),
        ("DP_RETRY__MAX_BACKOFF", "2s"),
        ("DP_BUFFER__FLUSH_INTERVAL", "500ms"),
    ];
    let mut child = env.spawn(&["run"], &settings);
    let load = env.produce_in_background(EVENTS, 600);
    wait_for("rows flowing", Duration::from_secs(60), || async { env.rows_so_far().await >= 3_000 }).await;

    proxy.silence(Duration::from_secs(3));
    let silenced = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await; // what was committing when it went silent
    let rows_in_silence = env.row_count().await;
    while silenced.elapsed() < SILENCE {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the pipeline must not exit while MySQL is silent"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(env.row_count().await, rows_in_silence, "nothing gets through a silent path");
    let log = env.log_path();
    let given_up = log_count(&log, "mysql did not answer within mysql.query_timeout");
    assert!(given_up >= 1, "the silent connection was given up on");

    proxy.restore();
    let restored = Instant::now();
    wait_for("rows again", Duration::from_secs(60), || async { env.row_count().await > rows_in_silence })
        .await;
    let recovered = restored.elapsed();
    let produced = as_set(load.await.expect("load"));
    wait_for("every event stored", Duration::from_secs(120), || async { env.rows_so_far().await >= EVENTS })
        .await;
    let status = sigterm(&mut child, Duration::from_secs(30));
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let left = env.redis_leftovers().await;
    eprintln!(
        "mysql silent {SILENCE:?}: rows at silence {rows_in_silence}, {given_up} connections given up after {QUERY_TIMEOUT:?}; first rows {recovered:?} after the path answered again; produced {EVENTS}, rows {rows}, distinct {distinct}, redis keys left {}",
        left.len()
    );
    // docs/operations.md: once the path answers, at most one call still waiting on a dead
    // connection or a silent handshake, then one backoff.
    let bound = QUERY_TIMEOUT.max(CONNECT_TIMEOUT) + MAX_BACKOFF;
    assert!(
        recovered <= bound + Duration::from_secs(3),
        "recovered within {bound:?} (+3 s): took {recovered:?}"
    );
    assert!(left.is_empty(), "nothing left in Redis: {left:?}");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_silent_right_after_its_commit_reached_the_server_stores_nothing_twice() {
    const EVENTS: u64 = 15_000;
    const TRAPS: usize = 3;
    // MySQL's COM_QUERY packet of `COMMIT` (length 7, sequence 0, command 3): forwarded to the
    // server, which commits, and the answer never comes back.
    const COMMIT: &[u8] = b"\x07\x00\x00\x00\x03COMMIT";
    let env = TestEnv::new("commit_silent");
    env.create_topic(4).await;
    env.without_unique_key().await;
    let proxy = Proxy::start("127.0.0.1:3306").await;
    let url = mysql_through(&proxy);
    let settings = [
        ("DP_MYSQL__URL", url.as_str()),
        ("DP_MYSQL__QUERY_TIMEOUT", "3s"),
        ("DP_RETRY__MAX_BACKOFF", "1s"),
        ("DP_BUFFER__FLUSH_INTERVAL", "500ms"),
    ];
    let mut child = env.spawn(&["run"], &settings);
    let load = env.produce_in_background(EVENTS, 500);
    wait_for("rows flowing", Duration::from_secs(60), || async { env.rows_so_far().await >= 1_000 }).await;
    let mut sprung_at = Vec::new();
    for trap in 1..=TRAPS {
        proxy.silence_after(COMMIT, Duration::from_secs(2));
        wait_for(&format!("commit {trap} cut off"), Duration::from_secs(30), || async {
            proxy.sprung() >= trap
        })
        .await;
        sprung_at.push(env.row_count().await);
        // The batch is retried once the deadline passes: rows flow again.
        let before = env.row_count().await;
        wait_for("rows again", Duration::from_secs(30), || async { env.row_count().await > before }).await;
    }
    let produced = as_set(load.await.expect("load"));
    wait_for("every event stored", Duration::from_secs(120), || async { env.rows_so_far().await >= EVENTS })
        .await;
    let status = sigterm(&mut child, Duration::from_secs(30));
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
    let given_up = log_count(&env.log_path(), "mysql did not answer within mysql.query_timeout");
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    eprintln!(
        "commit cut off {TRAPS} times (rows then {sprung_at:?}); {given_up} calls given up; produced {EVENTS}, rows {rows}, distinct {distinct}"
    );
    assert!(given_up >= TRAPS, "each cut-off commit was given up on and retried");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redis_connection_silent_mid_stream_keeps_rows_flowing_and_backups_resume() {
    const EVENTS: u64 = 30_000;
    const SILENCE: Duration = Duration::from_secs(15);
    let env = TestEnv::new("redis_silent");
    env.create_topic(3).await;
    env.without_unique_key().await;
    let proxy = Proxy::start("127.0.0.1:6379").await;
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let settings = [
        ("DP_REDIS__URL", url.as_str()),
        ("DP_REDIS__COMMAND_TIMEOUT", "1s"),
        ("DP_REDIS__CONNECT_TIMEOUT", "2s"),
        ("DP_BUFFER__FLUSH_INTERVAL", "500ms"),
    ];
    let mut child = env.spawn(&["run"], &settings);
    let load = env.produce_in_background(EVENTS, 1_000);
    wait_for("rows flowing", Duration::from_secs(60), || async { env.rows_so_far().await >= 3_000 }).await;

    proxy.silence(Duration::from_secs(3));
    let silenced = Instant::now();
    let at_silence = env.row_count().await;
    let log = env.log_path();
    wait_for("the buffer marked unreachable", Duration::from_secs(10), || async {
        log_count(&log, "write-ahead buffer unreachable") >= 1
    })
    .await;
    let noticed = silenced.elapsed();
    while silenced.elapsed() < SILENCE {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the pipeline must not exit while Redis is silent"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let in_silence = env.row_count().await - at_silence;
    assert!(in_silence >= 5_000, "rows keep flowing while Redis is silent: {in_silence} in {SILENCE:?}");

    proxy.restore();
    let restored = Instant::now();
    let back = log_count(&log, "write-ahead buffer reachable again");
    wait_for("backups resumed", Duration::from_secs(60), || async {
        log_count(&log, "write-ahead buffer reachable again") > back
    })
    .await;
    let resumed = restored.elapsed();
    let produced = as_set(load.await.expect("load"));
    wait_for("every event stored", Duration::from_secs(120), || async { env.rows_so_far().await >= EVENTS })
        .await;
    wait_for("the write-ahead keys deleted", Duration::from_secs(30), || async {
        env.redis_keys().await == 0
    })
    .await;
    let status = sigterm(&mut child, Duration::from_secs(30));
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let left = env.redis_leftovers().await;
    eprintln!(
        "redis silent {SILENCE:?}: noticed after {noticed:?}, {in_silence} rows stored meanwhile; backups resumed {resumed:?} after the path answered again; produced {EVENTS}, rows {rows}, distinct {distinct}, redis keys left {}",
        left.len()
    );
    assert!(left.is_empty(), "nothing left in Redis: {left:?}");
    env.drop_tables().await;
}
