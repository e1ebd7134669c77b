//! `/livez`, `/readyz` and `/metrics` of the real binary during a run: the counters match what
//! was produced and stored, and readiness flips to 503 while MySQL is cut and back after.

mod common;

use std::time::Duration;

use common::{Proxy, TestEnv, http_address, http_get, metric_sum, sigterm, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_stored_and_readiness_follows_mysql() {
    const EVENTS: u64 = 5_000;
    let env = TestEnv::new("observe");
    env.create_topic(3).await;
    let proxy = Proxy::start("127.0.0.1:3306").await;
    let url = format!("mysql://root@127.0.0.1:{}/test", proxy.port);
    let mut child = env.spawn(&["run"], &[("DP_MYSQL__URL", url.as_str()), ("DP_RETRY__MAX_BACKOFF", "1s")]);
    let log = env.log_path();
    wait_for("http endpoint", Duration::from_secs(30), || async { http_address(&log).is_some() }).await;
    let address = http_address(&log).expect("address");
    assert_eq!(http_get(&address, "/livez").expect("livez").0, 200);
    wait_for("ready", Duration::from_secs(30), || async {
        http_get(&address, "/readyz").is_ok_and(|(code, _)| code == 200)
    })
    .await;

    let produced = env.produce(EVENTS).await;
    wait_for("every event stored", Duration::from_secs(60), || async { env.rows_so_far().await >= EVENTS })
        .await;
    // The rows are visible at the commit; the counters move when the sink's call returns.
    wait_for("the last batch counted", Duration::from_secs(10), || async {
        http_get(&address, "/metrics")
            .is_ok_and(|(_, text)| metric_sum(&text, "dp_batch_rows_sum") >= EVENTS as f64)
    })
    .await;
    let (code, text) = http_get(&address, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    let sum = |name: &str| metric_sum(&text, name);
    assert_eq!(sum("dp_messages_consumed_total"), EVENTS as f64, "consumed, summed over partitions");
    assert_eq!(sum("dp_rows_inserted_total"), EVENTS as f64);
    assert_eq!(sum("dp_end_to_end_latency_seconds_count"), EVENTS as f64, "one latency sample per message");
    assert_eq!(sum("dp_batch_rows_sum"), EVENTS as f64, "batch sizes add up to the messages");
    assert!(sum("dp_batches_total") >= 5.0, "batches of at most 1000 rows");
    assert_eq!(sum("dp_buffered_messages"), 0.0);
    assert_eq!(sum("dp_consuming"), 1.0);
    assert!(text.contains("dp_build_info{version=\""), "build info");
    let partitions = text.lines().filter(|l| l.starts_with("dp_messages_consumed_total{")).count();
    assert_eq!(partitions, 3, "one series per partition");
    assert!(!text.contains("event_id") && !text.contains("root@"), "no content, no credentials");
    let readyz = http_get(&address, "/readyz").expect("readyz").1;
    for body in [&text, &readyz] {
        assert!(!body.contains("mysql://") && !body.contains("redis://"), "no connection strings:\n{body}");
        assert!(!body.contains("TRK") && !body.contains("IN_TRANSIT"), "no message content:\n{body}");
        assert!(produced.iter().take(500).all(|id| !body.contains(id.as_str())), "no event ids");
    }

    // MySQL cut: the next batch fails and readiness says so; back once MySQL is.
    proxy.cut();
    env.produce(100).await;
    wait_for("not ready while mysql is cut", Duration::from_secs(30), || async {
        http_get(&address, "/readyz").is_ok_and(|(code, body)| code == 503 && body.contains("mysql"))
    })
    .await;
    assert_eq!(http_get(&address, "/livez").expect("livez").0, 200, "alive all along");
    proxy.restore();
    wait_for("ready again", Duration::from_secs(30), || async {
        http_get(&address, "/readyz").is_ok_and(|(code, _)| code == 200)
    })
    .await;
    wait_for("the rest stored", Duration::from_secs(30), || async {
        env.rows_so_far().await >= EVENTS + 100
    })
    .await;
    let text = http_get(&address, "/metrics").expect("metrics").1;
    assert!(metric_sum(&text, "dp_sink_retries_total") >= 1.0, "retries counted");
    assert_eq!(metric_sum(&text, "dp_sink_failing"), 0.0);

    assert!(sigterm(&mut child, Duration::from_secs(25)).success());
    assert_eq!(env.row_count().await, EVENTS + 100);
    env.drop_tables().await;
}
