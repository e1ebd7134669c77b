//! SIGKILL the real binary again and again while it ingests a backlog: every event ends up in
//! MySQL exactly once, and Redis is empty at the end. The second test drops the unique key on
//! `event_id`, so only the offset watermark stands between a replay and a duplicate row.

mod common;

use std::time::{Duration, Instant};

use common::{TestEnv, as_set, sigkill, sigterm, wait_for};
use mysql_async::prelude::Queryable;
use rand::Rng;

const EVENTS: u64 = 100_000;
const KILLS: usize = 5;

async fn kill_repeatedly_then_finish(env: &TestEnv) {
    env.create_topic(4).await;
    let produced = as_set(env.produce(EVENTS).await);
    assert_eq!(produced.len() as u64, EVENTS);
    // Kafka commits are rare (60 s), so almost every restart re-reads records already stored:
    // the watermark and the idempotent insert must absorb them.
    let settings = [("DP_KAFKA__COMMIT_INTERVAL", "60s"), ("DP_BUFFER__FLUSH_INTERVAL", "500ms")];
    let mut rng = rand::rng();
    let mut kills = Vec::new();
    for round in 0..KILLS {
        let before = env.rows_so_far().await;
        let mut child = env.spawn(&["run"], &settings);
        // Kill while it is writing: once it has stored a few more batches, after a random extra
        // delay (batches of 1000 commit every few tens of milliseconds, so the kill lands inside
        // or between flushes at random).
        let step = rng.random_range(1_000..4_000);
        let mut conn = env.mysql().await;
        let count_sql = format!("SELECT COUNT(*) FROM `{}`", env.table);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let rows: u64 = conn.query_first(&count_sql).await.ok().flatten().unwrap_or(0);
            if rows >= before + step {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: no progress ({rows} rows)");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..60))).await;
        sigkill(&mut child);
        let after = env.rows_so_far().await;
        kills.push((before, after));
        assert!(after < EVENTS, "round {round}: the backlog is too small to kill mid-ingest ({after} rows)");
    }
    let started = Instant::now();
    let mut last = env.spawn(&["run"], &settings);
    wait_for("every event stored", Duration::from_secs(180), || async { env.rows_so_far().await >= EVENTS })
        .await;
    wait_for("Redis emptied", Duration::from_secs(30), || async { env.redis_keys().await == 0 }).await;
    let status = sigterm(&mut last, Duration::from_secs(30));
    assert!(status.success(), "clean exit on SIGTERM, got {status}");

    let (rows, distinct) = env.assert_stored_once(&produced).await;
    let left = env.redis_leftovers().await;
    eprintln!(
        "kills (rows before, rows at kill): {kills:?}; final run {:?}; produced {EVENTS}, rows {rows}, distinct {distinct}, redis keys left {}",
        started.elapsed(),
        left.len()
    );
    assert!(left.is_empty(), "nothing left in Redis: {left:?}");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_five_times_during_a_100k_backlog_loses_and_duplicates_nothing() {
    let env = TestEnv::new("kill_loop");
    kill_repeatedly_then_finish(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_unique_key_the_watermark_alone_prevents_duplicates() {
    let env = TestEnv::new("kill_nokey");
    env.without_unique_key().await;
    kill_repeatedly_then_finish(&env).await;
}
