//! Runs the real pipeline — Kafka source, Redis write-ahead buffer, flush loop, restore on boot —
//! into PostgreSQL instead of MySQL. Only the sink differs from `delivery-pipeline run`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dp_assembly::{Config, PipelineBuilder};
use example_postgres_sink::PostgresSink;

/// Consume Kafka topics into a PostgreSQL table through the delivery pipeline.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Topic to consume; repeat the flag for more.
    #[arg(long = "topic", required = true)]
    topics: Vec<String>,
    /// PostgreSQL connection URL (`postgres://user[:password]@host:port/database`).
    #[arg(
        long,
        env = "PG_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Table to write; `<table>_dead_letter` holds what cannot be stored. Created if missing.
    #[arg(long, default_value = "delivery_events")]
    table: String,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Consumer group; `postgres-sink-<first topic>` when not given.
    #[arg(long)]
    group_id: Option<String>,
    /// This instance's identity: names its Redis keys (`msg:buffer:<instance-id>:…`). Keep it
    /// stable across restarts so a restart restores what the last run buffered.
    #[arg(long, default_value = "postgres-sink-0")]
    instance_id: String,
    /// Redis URL of the write-ahead buffer.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Largest batch, in records.
    #[arg(long, default_value_t = 1000)]
    max_rows: usize,
    /// Flush a partial batch after this long (`1s`, `500ms`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    flush_interval: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();

    let mut config = Config { instance_id: args.instance_id.clone(), ..Config::default() };
    config.kafka.brokers = args.brokers.clone();
    config.kafka.group_id =
        args.group_id.clone().unwrap_or_else(|| format!("postgres-sink-{}", args.topics[0]));
    config.kafka.topics = args.topics.clone();
    config.redis.url = dp_core::SecretUrl::new(args.redis_url.clone());
    config.buffer.max_rows = args.max_rows;
    config.buffer.flush_interval = args.flush_interval;

    let sink = PostgresSink::connect(&args.postgres_url, &args.table).await?;
    let pipeline = PipelineBuilder::new(config)
        .sink(Arc::new(sink))
        .build()
        .await
        .context("cannot build the pipeline")?;
    let summary = pipeline
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let s = &summary.stats;
    println!(
        "{} new rows in postgres table {} ({} already there, {} dead-lettered to {}_dead_letter) in {:.1?}",
        s.inserted, args.table, s.duplicates, s.dead_lettered, args.table, summary.elapsed
    );
    Ok(())
}
