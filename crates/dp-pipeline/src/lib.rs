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
mod runtime;
mod stats;

use std::sync::Arc;

use dp_core::Watermarks;

pub use config::{BufferConfig, Config, LogConfig, LogFormat, RetryConfig};
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
}

/// Validates `config`, connects to MySQL (creating the tables when configured) and Redis, and
/// creates the Kafka consumer.
pub async fn build(config: &Config) -> Result<Pipeline, BuildError> {
    config.validate().map_err(BuildError::Config)?;
    let sink =
        dp_sink_mysql::MysqlSink::connect(&config.mysql).await?.with_consumer_group(&config.kafka.group_id);
    let buffer = dp_buffer_redis::RedisBuffer::connect(&config.redis, &config.instance_id).await?;
    let source = dp_source_kafka::KafkaSource::new(&config.kafka)?
        .with_watermarks(Arc::new(sink.clone()) as Arc<dyn Watermarks>);
    Ok(Pipeline::new(
        Box::new(source),
        Arc::new(buffer),
        Arc::new(sink),
        config.buffer.clone(),
        config.retry.clone(),
        config.shutdown_timeout,
    ))
}
