//! The default delivery-pipeline: the Kafka source, the Redis write-ahead buffer and the MySQL
//! sink, configured by one [`Config`] and wired into the [`dp_pipeline`] runtime.
//!
//! [`PipelineBuilder`] assembles a pipeline from a [`Config`], with any part replaced by your
//! own (a custom [`Sink`], say) or sharing your service's MySQL pool; [`build`] is the
//! shorthand when the configuration says it all. A service that brings every part of its own
//! needs only `dp-core` and `dp-pipeline` (see `docs/embedding.md`).
//!
//! ```no_run
//! # async fn example(config: dp_assembly::Config) -> Result<(), Box<dyn std::error::Error>> {
//! let pipeline = dp_assembly::build(&config).await?;
//! let summary = pipeline.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! println!("{} rows inserted", summary.stats.inserted);
//! # Ok(()) }
//! ```

pub mod config;
pub mod filter;

use std::sync::Arc;

use dp_core::{Buffer, Sink, Source, Watermarks};

pub use config::{Config, DeadLetterConfig};
/// The runtime, re-exported: a pipeline built here is a [`dp_pipeline::Pipeline`].
pub use dp_pipeline::{
    self, BatchingConfig, CommitPolicy, InvalidSetting, PauseControl, Pipeline, PipelineError,
    PipelineOptions, PipelineStats, Readiness, RecordFilter, RetryConfig, RunSummary, StatsSnapshot,
};
pub use filter::{FilterAction, FilterConfig, Filters};

/// The MySQL client the MySQL sink uses, for hosts that lend it their pool
/// ([`PipelineBuilder::mysql_pool`]).
pub use dp_sink_mysql::mysql_async;

/// The sections of [`Config`] that the parts define, for hosts that build them in code.
pub use dp_buffer_redis::RedisBufferConfig;
pub use dp_sink_mysql::MysqlSinkConfig;
pub use dp_source_kafka::KafkaSourceConfig;

/// Why a pipeline could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting is invalid; the error names it.
    #[error("invalid configuration: {0}")]
    Config(#[from] InvalidSetting),
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
/// creates the Kafka consumer: [`PipelineBuilder::new`]`(config.clone()).build()`.
pub async fn build(config: &Config) -> Result<Pipeline, BuildError> {
    PipelineBuilder::new(config.clone()).build().await
}

/// Assembles a [`Pipeline`] for a service that embeds it.
///
/// Every part not given is built from the [`Config`]: the Kafka source from `[kafka]`, the Redis
/// write-ahead buffer from `[redis]`, the MySQL sink from `[mysql]` (on the service's own pool
/// when [`mysql_pool`](Self::mysql_pool) lends one). Give a [`sink`](Self::sink) of your own to
/// write anywhere else: implementing [`dp_core::Sink`] takes one method.
///
/// Nothing global is touched: no environment variable is read, no signal handler or tracing
/// subscriber is installed, no metrics recorder is set (metrics go to whatever recorder the
/// host installed, or nowhere). The host decides when to stop by the future it passes to
/// [`Pipeline::run`].
///
/// ```no_run
/// use std::sync::Arc;
///
/// use async_trait::async_trait;
/// use dp_core::{BatchOutcome, Record, Sink, SinkError};
/// use dp_assembly::{Config, PipelineBuilder};
///
/// /// Counts records; a real sink stores them idempotently.
/// struct Counting;
///
/// #[async_trait]
/// impl Sink for Counting {
///     async fn write_batch(&self, records: &[Record]) -> Result<BatchOutcome, SinkError> {
///         Ok(BatchOutcome { inserted: records.len(), ..BatchOutcome::default() })
///     }
/// }
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = Config::default();
/// config.instance_id = "orders-service-0".into();
/// config.kafka.topics = vec!["delivery-events".into()];
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let pipeline = PipelineBuilder::new(config).sink(Arc::new(Counting)).build().await?;
/// let stats = pipeline.stats(); // read it from your own handlers while the pipeline runs
/// let running = tokio::spawn(pipeline.run(async move { let _ = stopped.await; }));
/// // … the service runs; on its own shutdown:
/// let _ = stop.send(());
/// let summary = running.await??;
/// assert_eq!(summary.stats.inserted, stats.snapshot().inserted);
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct PipelineBuilder {
    config: Config,
    source: Option<Box<dyn Source>>,
    buffer: Option<Arc<dyn Buffer>>,
    sink: Option<Arc<dyn Sink>>,
    mysql_pool: Option<dp_sink_mysql::mysql_async::Pool>,
}

impl PipelineBuilder {
    /// Starts from `config`; [`build`](Self::build) validates it.
    pub fn new(config: Config) -> Self {
        Self { config, source: None, buffer: None, sink: None, mysql_pool: None }
    }

    /// Reads from this source instead of the Kafka consumer `[kafka]` describes.
    ///
    /// The Kafka source also asks the MySQL sink for its offset watermarks on assignment; a
    /// source of your own does not (its [`Source::health`] probe, if any, still reaches
    /// [`Pipeline::readiness`]).
    pub fn source(mut self, source: Box<dyn Source>) -> Self {
        self.source = Some(source);
        self
    }

    /// Writes ahead to this buffer instead of the Redis buffer `[redis]` describes.
    pub fn buffer(mut self, buffer: Arc<dyn Buffer>) -> Self {
        self.buffer = Some(buffer);
        self
    }

    /// Writes batches to this sink instead of MySQL. `[mysql]` and `[dead_letter]` are then
    /// ignored, and offsets follow Kafka's commits alone (the MySQL watermark is the MySQL
    /// sink's). The sink must be idempotent; see [`dp_core::Sink`].
    pub fn sink(mut self, sink: Arc<dyn Sink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Builds the MySQL sink on this pool (the host service's own) instead of opening one from
    /// `mysql.url`. The pool's own options apply; the pipeline never disconnects it.
    pub fn mysql_pool(mut self, pool: dp_sink_mysql::mysql_async::Pool) -> Self {
        self.mysql_pool = Some(pool);
        self
    }

    /// Validates the configuration and connects whatever was not given.
    pub async fn build(self) -> Result<Pipeline, BuildError> {
        let Self { config, source, buffer, sink, mysql_pool } = self;
        config.validate()?;
        let buffer: Arc<dyn Buffer> = match buffer {
            Some(b) => b,
            None => {
                let redis = dp_buffer_redis::RedisBuffer::connect(&config.redis, &config.instance_id).await?;
                check_buffer_persistence(&config, &redis).await?;
                Arc::new(redis)
            }
        };
        // The watermark says "everything below is stored". Under after_buffer, Kafka commits
        // past messages that are only in Redis, so a new owner's batches must not raise it over
        // messages another instance still holds: the sink records exactly the offsets stored
        // (ranges), and partitions start at Kafka's committed offset alone.
        let watermarks = config.commit_policy == CommitPolicy::AfterSink;
        let (sink, watermark_reader): (Arc<dyn Sink>, Option<Arc<dyn Watermarks>>) = match sink {
            Some(s) => (s, None),
            None => {
                let mut mysql = match mysql_pool {
                    Some(pool) => dp_sink_mysql::MysqlSink::with_pool(pool, &config.mysql).await?,
                    None => dp_sink_mysql::MysqlSink::connect(&config.mysql).await?,
                };
                mysql = mysql.with_consumer_group(&config.kafka.group_id);
                let formats = config.mysql.registry_formats();
                if !formats.is_empty() {
                    let decoder = dp_schema_registry::Decoder::new(&config.schema_registry)
                        .map_err(|e| InvalidSetting::from_line(&e))?;
                    if config.filter.iter().any(|f| f.pointer.is_some()) {
                        tracing::warn!(
                            "[[filter]] rules on a JSON pointer do not apply to values read through the Schema Registry ({}): they are decoded by the sink, after the filters",
                            formats.join(", ")
                        );
                    }
                    mysql = mysql.with_decoder(Arc::new(decoder));
                }
                if !watermarks {
                    mysql = mysql.with_watermark_mode(dp_sink_mysql::WatermarkMode::Ranges);
                }
                if config.dead_letter.kafka {
                    let publisher = dp_source_kafka::KafkaDeadLetters::new(
                        &config.kafka,
                        &config.dead_letter.kafka_topic,
                    )?;
                    publisher.ensure_topics(&config.kafka.topics).await?;
                    mysql = mysql.with_dead_letter_publisher(Arc::new(publisher), config.dead_letter.mysql);
                }
                let reader = watermarks.then(|| Arc::new(mysql.clone()) as Arc<dyn Watermarks>);
                (Arc::new(mysql), reader)
            }
        };
        let source: Box<dyn Source> = match source {
            Some(s) => s,
            None => {
                let mut kafka =
                    dp_source_kafka::KafkaSource::for_batches(&config.kafka, config.buffer.max_rows)?;
                if let Some(reader) = watermark_reader {
                    kafka = kafka.with_watermarks(reader);
                }
                Box::new(kafka)
            }
        };
        Ok(Pipeline::new(source, buffer, sink, config.options()?)?)
    }
}

/// Under `after_buffer`, Redis is the only copy of what Kafka committed past: refuse a Redis
/// that does not persist writes unless the configuration accepts that.
async fn check_buffer_persistence(
    config: &Config,
    buffer: &dp_buffer_redis::RedisBuffer,
) -> Result<(), BuildError> {
    if config.commit_policy != CommitPolicy::AfterBuffer {
        return Ok(());
    }
    match buffer.persistence().await {
        Ok(p) if p.is_durable() => {
            if p.appendfsync == "everysec" {
                tracing::warn!(
                    "commit_policy = after_buffer with appendfsync everysec: a Redis crash can lose up to 1 s of messages Kafka already committed past"
                );
            }
            Ok(())
        }
        Ok(p) if config.allow_volatile_buffer => {
            tracing::warn!(appendonly = %p.appendonly, appendfsync = %p.appendfsync, "commit_policy = after_buffer on a Redis that does not persist writes (allowed by allow_volatile_buffer)");
            Ok(())
        }
        Ok(p) => Err(BuildError::Unsafe(format!(
            "commit_policy: after_buffer needs a Redis that persists writes, but {} has appendonly={} appendfsync={}; \
             enable AOF (appendonly yes, appendfsync everysec or always), use commit_policy = \"after_sink\", \
             or set allow_volatile_buffer = true to accept losing messages on a Redis restart",
            config.redis.url, p.appendonly, p.appendfsync
        ))),
        Err(e) if config.allow_volatile_buffer => {
            tracing::warn!(error = %e, "cannot read Redis persistence settings (allowed by allow_volatile_buffer)");
            Ok(())
        }
        Err(e) => Err(BuildError::Unsafe(format!(
            "commit_policy: after_buffer needs to confirm Redis persistence, but CONFIG GET failed: {e}; \
             use commit_policy = \"after_sink\" or set allow_volatile_buffer = true"
        ))),
    }
}
