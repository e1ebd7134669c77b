//! The deliveries API as a process: parses arguments, installs logging and the signal handler,
//! opens the service's MySQL pool, and calls [`example_axum_service::serve`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dp_assembly::Config;
use dp_core::SecretUrl;
use tracing_subscriber::EnvFilter;

/// A deliveries API that also consumes the delivery-events topic into the table it serves.
///
/// Routes: GET /deliveries/{tracking_id}[?limit=n] (a shipment's latest events) and
/// GET /pipeline (the embedded pipeline's counters and readiness). Ctrl-C or SIGTERM stops it:
/// the pipeline drains first, then the API.
#[derive(Parser)]
#[command(name = "example-axum-service")]
struct Args {
    /// Kafka topic of delivery events to consume.
    topic: String,
    /// Address the API listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Kafka consumer group.
    #[arg(long, default_value = "deliveries-api")]
    group: String,
    /// This instance's identity (names its Redis keys); stable across restarts, unique among
    /// the instances running at once.
    #[arg(long, default_value = "deliveries-api-0")]
    instance_id: String,
    /// MySQL/MariaDB database of the service.
    #[arg(
        long,
        env = "MYSQL_URL",
        hide_env_values = true,
        default_value = "mysql://root@127.0.0.1:3306/test"
    )]
    mysql_url: String,
    /// Connections of the service's pool, shared by the API and the pipeline.
    #[arg(long, default_value_t = 8)]
    mysql_connections: usize,
    /// Table the pipeline fills and the API reads (created if missing).
    #[arg(long, default_value = "delivery_events")]
    table: String,
    /// Redis holding the pipeline's write-ahead copies.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Write a batch at the latest this long after its first event, so the API shows new events
    /// within about this delay even under light traffic.
    #[arg(long, default_value_t = 1000)]
    flush_interval_ms: u64,
}

impl Args {
    fn config(&self) -> Config {
        let mut config = Config { instance_id: self.instance_id.clone(), ..Config::default() };
        config.kafka.brokers = self.brokers.clone();
        config.kafka.topics = vec![self.topic.clone()];
        config.kafka.group_id = self.group.clone();
        config.mysql.url = SecretUrl::new(self.mysql_url.as_str());
        config.mysql.table = self.table.clone();
        config.redis.url = SecretUrl::new(self.redis_url.as_str());
        config.buffer.flush_interval = Duration::from_millis(self.flush_interval_ms);
        config
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let args = Args::parse();
    let config = args.config();

    // The service's pool, as it had before it embedded the pipeline; the pipeline borrows it.
    let pool = example_axum_service::mysql_pool(&config.mysql, args.mysql_connections)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let served = example_axum_service::serve(listener, pool.clone(), config, shutdown_signal()).await;
    // The pool's owner closes it, once nothing uses it any more.
    if let Err(e) = pool.disconnect().await {
        tracing::warn!(error = %e, "disconnecting the mysql pool failed");
    }
    let summary = served?;
    tracing::info!(
        consumed = summary.stats.consumed,
        inserted = summary.stats.inserted,
        duplicates = summary.stats.duplicates,
        dead_lettered = summary.stats.dead_lettered,
        "stopped cleanly"
    );
    Ok(())
}

/// Ctrl-C, or SIGTERM (what an orchestrator sends).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("stop signal received");
}
