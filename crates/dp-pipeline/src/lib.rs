//! The delivery-pipeline runtime: wires a [`Source`](dp_core::Source), a
//! [`Buffer`](dp_core::Buffer) and a [`Sink`](dp_core::Sink) into the flush loop, with
//! restore-on-boot.
//!
//! The library never reads the environment, installs no signal handler and no global
//! subscriber: the caller passes the configuration and a shutdown future.
//!
//! ```no_run
//! # async fn example(config: dp_pipeline::Config) -> Result<(), Box<dyn std::error::Error>> {
//! let pipeline = dp_pipeline::build(&config).await?;
//! let summary = pipeline.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! println!("{} rows inserted", summary.stats.inserted);
//! # Ok(()) }
//! ```

pub mod config;
pub mod metrics;
mod readiness;
mod runtime;
mod spill;
mod stats;
mod write_ahead;

use std::sync::Arc;

use dp_core::Watermarks;

pub use config::{
    BufferConfig, CommitPolicy, Config, DeadLetterConfig, HttpConfig, LogConfig, LogFormat, RetryConfig,
};
pub use readiness::Readiness;
pub use runtime::{Pipeline, PipelineError, RunSummary};
pub use stats::{PipelineStats, StatsSnapshot};

/// Why a pipeline could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting is invalid; the message names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The Kafka source could not be created.
    #[error(transparent)]
    Source(#[from] dp_source_kafka::KafkaSourceError),
    /// Redis could not be reached.
    #[error(transparent)]
    Buffer(#[from] dp_buffer_redis::RedisBufferError),
    /// MySQL could not be reached or prepared.
    #[error(transparent)]
    Sink(#[from] dp_sink_mysql::MysqlSinkError),
    /// The settings would risk losing messages.
    #[error("{0}")]
    Unsafe(String),
}

/// Validates `config`, connects to MySQL (creating the tables when configured) and Redis, and
/// creates the Kafka consumer.
pub async fn build(config: &Config) -> Result<Pipeline, BuildError> {
    config.validate().map_err(BuildError::Config)?;
    let mut sink = dp_sink_mysql::MysqlSink::connect(&config.mysql).await?;
    // The watermark says "everything below is stored". Under after_buffer, Kafka commits past
    // messages that are only in Redis, so a new owner's batches would raise the watermark over
    // messages another instance still holds; there, idempotency rests on the unique key alone.
    let watermarks = config.commit_policy == CommitPolicy::AfterSink;
    if watermarks {
        sink = sink.with_consumer_group(&config.kafka.group_id);
    }
    let buffer = dp_buffer_redis::RedisBuffer::connect(&config.redis, &config.instance_id).await?;
    if config.commit_policy == CommitPolicy::AfterBuffer {
        match buffer.persistence().await {
            Ok(p) if p.is_durable() => {
                if p.appendfsync == "everysec" {
                    tracing::warn!(
                        "commit_policy = after_buffer with appendfsync everysec: a Redis crash can lose up to 1 s of messages Kafka already committed past"
                    );
                }
            }
            Ok(p) if config.allow_volatile_buffer => {
                tracing::warn!(appendonly = %p.appendonly, appendfsync = %p.appendfsync, "commit_policy = after_buffer on a Redis that does not persist writes (allowed by allow_volatile_buffer)");
            }
            Ok(p) => {
                return Err(BuildError::Unsafe(format!(
                    "commit_policy: after_buffer needs a Redis that persists writes, but {} has appendonly={} appendfsync={}; \
                     enable AOF (appendonly yes, appendfsync everysec or always), use commit_policy = \"after_sink\", \
                     or set allow_volatile_buffer = true to accept losing messages on a Redis restart",
                    config.redis.url, p.appendonly, p.appendfsync
                )));
            }
            Err(e) if config.allow_volatile_buffer => {
                tracing::warn!(error = %e, "cannot read Redis persistence settings (allowed by allow_volatile_buffer)");
            }
            Err(e) => {
                return Err(BuildError::Unsafe(format!(
                    "commit_policy: after_buffer needs to confirm Redis persistence, but CONFIG GET failed: {e}; \
                     use commit_policy = \"after_sink\" or set allow_volatile_buffer = true"
                )));
            }
        }
    }
    if config.dead_letter.kafka {
        let publisher =
            dp_source_kafka::KafkaDeadLetters::new(&config.kafka, &config.dead_letter.kafka_topic)?;
        publisher.ensure_topics(&config.kafka.topics).await?;
        sink = sink.with_dead_letter_publisher(Arc::new(publisher), config.dead_letter.mysql);
    }
    let mut source = dp_source_kafka::KafkaSource::new(&config.kafka)?;
    if watermarks {
        source = source.with_watermarks(Arc::new(sink.clone()) as Arc<dyn Watermarks>);
    }
    let health = source.health();
    Ok(Pipeline::new(
        Box::new(source),
        Arc::new(buffer),
        Arc::new(sink),
        config.buffer.clone(),
        config.retry.clone(),
        config.shutdown_timeout,
    )
    .with_commit_policy(config.commit_policy)
    .with_kafka_health(health))
}
