//! A custom sink from scratch: newline-delimited JSON in a file (`NdjsonSink`, in `lib.rs`), run
//! through the pipeline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dp_pipeline::{BufferConfig, Pipeline, RetryConfig};
use example_ndjson_sink::NdjsonSink;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut args = std::env::args().skip(1);
    let topic = args.next().context("usage: example-ndjson-sink <topic> <file>")?;
    let path = PathBuf::from(args.next().context("usage: example-ndjson-sink <topic> <file>")?);

    let kafka = dp_source_kafka::KafkaSourceConfig {
        topics: vec![topic.clone()],
        group_id: format!("ndjson-{topic}"),
        ..Default::default()
    };
    let source = dp_source_kafka::KafkaSource::new(&kafka)?;
    let buffer = dp_buffer_redis::RedisBuffer::connect(&Default::default(), "ndjson-example").await?;
    let sink = NdjsonSink::open(&path)?;
    let pipeline = Pipeline::new(
        Box::new(source),
        Arc::new(buffer),
        Arc::new(sink),
        BufferConfig { max_rows: 500, flush_interval: Duration::from_secs(1), ..BufferConfig::default() },
        RetryConfig::default(),
        Duration::from_secs(20),
    );
    let summary = pipeline
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    println!(
        "wrote {} new lines to {} ({} already there)",
        summary.stats.inserted,
        path.display(),
        summary.stats.duplicates
    );
    Ok(())
}
