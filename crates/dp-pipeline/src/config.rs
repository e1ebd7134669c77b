//! The whole configuration of a pipeline instance, as plain serde data.
//!
//! Loading (file, environment) is the binary's job; this module only defines the shape, the
//! defaults and a pure [`Config::validate`]. Every section rejects unknown keys.

use std::time::Duration;

use bytesize::ByteSize;
use dp_buffer_redis::RedisBufferConfig;
use dp_sink_mysql::MysqlSinkConfig;
use dp_source_kafka::KafkaSourceConfig;
use serde::{Deserialize, Serialize};

/// Everything a `delivery-pipeline run` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This instance's identity: names its Redis keys (`msg:buffer:<instance_id>:…`). Stable
    /// across restarts of the same pod (a StatefulSet pod name, or the host name). Empty means
    /// "the host name", filled in by the binary.
    pub instance_id: String,
    /// The Kafka source.
    pub kafka: KafkaSourceConfig,
    /// The Redis write-ahead buffer.
    pub redis: RedisBufferConfig,
    /// The MySQL sink.
    pub mysql: MysqlSinkConfig,
    /// Batching.
    pub buffer: BufferConfig,
    /// Where messages that cannot become rows go.
    pub dead_letter: DeadLetterConfig,
    /// Retrying a batch the sink could not write.
    pub retry: RetryConfig,
    /// How long a graceful shutdown may take before the process gives up (what is left stays
    /// in Redis and is restored on the next start).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// When Kafka offsets may advance past a message: `after_sink` (default) or `after_buffer`.
    pub commit_policy: CommitPolicy,
    /// Let `after_buffer` run against a Redis that does not persist writes (AOF off or
    /// `appendfsync no`). A Redis restart then loses messages Kafka already committed past.
    pub allow_volatile_buffer: bool,
    /// Logging. Read by the binary only: the library never installs a subscriber.
    pub log: LogConfig,
    /// The health and metrics endpoint. Read by the binary only: the library serves nothing.
    pub http: HttpConfig,
}

/// The binary's HTTP endpoint (`[http]`, `DP_HTTP__*`): `/livez`, `/readyz`, `/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve the endpoint at all.
    pub enabled: bool,
    /// `host:port` to listen on; port 0 picks a free one (logged at startup).
    pub address: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { enabled: true, address: "0.0.0.0:9000".into() }
    }
}

/// When Kafka offsets may advance past a message. In both, an offset never passes a message
/// that is held only in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitPolicy {
    /// Once the message is in MySQL (or its dead-letter table). Redis only speeds up restarts;
    /// losing Redis loses nothing. Kafka lag includes what is buffered.
    #[default]
    AfterSink,
    /// Once the message is in Redis, as the original design had it: Kafka lag reflects
    /// consumption, and Redis (with AOF persistence) is the only copy until the flush.
    AfterBuffer,
}

/// How the binary logs (`[log]`, `DP_LOG__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (human-readable) or `json` (one object per line).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,dp_pipeline=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            instance_id: String::new(),
            kafka: KafkaSourceConfig::default(),
            redis: RedisBufferConfig::default(),
            mysql: MysqlSinkConfig::default(),
            buffer: BufferConfig::default(),
            dead_letter: DeadLetterConfig::default(),
            retry: RetryConfig::default(),
            shutdown_timeout: Duration::from_secs(25),
            commit_policy: CommitPolicy::AfterSink,
            allow_volatile_buffer: false,
            log: LogConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

/// Dead-letter destinations (`[dead_letter]`, `DP_DEAD_LETTER__*`). Every entry keeps the
/// original bytes, its Kafka coordinates and the reason.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    /// Write dead letters to the MySQL dead-letter table (`mysql.dead_letter_table`), in the
    /// batch's own transaction. `delivery-pipeline dlq list/replay` read this table.
    pub mysql: bool,
    /// Publish dead letters to a Kafka topic as well (or instead, with `mysql = false`), before
    /// the batch commits: at least once, reason and coordinates in headers.
    pub kafka: bool,
    /// The dead-letter topic; `{topic}` stands for the source topic. Created at startup when
    /// missing, with the source topic's partition count.
    pub kafka_topic: String,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self { mysql: true, kafka: false, kafka_topic: "{topic}.dlq".into() }
    }
}

/// When batches are flushed (`[buffer]`, `DP_BUFFER__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Flush when this many records are buffered; also the largest batch. The instance holds at
    /// most this many records being collected plus one batch being written.
    pub max_rows: usize,
    /// Flush when the oldest buffered record has waited this long (`30s`, `500ms`).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// While the sink is failing, the most records this instance holds, in memory and in the
    /// write-ahead buffer together. Beyond the two batches memory holds, full batches are kept
    /// in the buffer only (*spilled*) and read back once the sink recovers; at this limit the
    /// Kafka partitions are paused. `2 × max_rows` turns spilling off. Unset: the larger of
    /// 100,000 and `2 × max_rows` ([`BufferConfig::max_buffered_rows`]).
    pub max_buffered_rows: Option<usize>,
    /// The same limit in payload bytes (`"256 MiB"`, or a number of bytes).
    pub max_buffered_bytes: ByteSize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_rows: 1000,
            flush_interval: Duration::from_secs(30),
            max_buffered_rows: None,
            max_buffered_bytes: ByteSize::mib(256),
        }
    }
}

impl BufferConfig {
    /// The limit on records held while the sink fails: `max_buffered_rows` when set, else the
    /// larger of 100,000 and `2 × max_rows`.
    pub fn max_buffered_rows(&self) -> usize {
        self.max_buffered_rows.unwrap_or_else(|| (2 * self.max_rows).max(100_000))
    }
}

/// Exponential backoff with full jitter for transient sink errors (`[retry]`, `DP_RETRY__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First delay before a retry.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Largest delay between retries.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Growth factor of the delay.
    pub multiplier: f32,
    /// Give up after this many retries and stop the pipeline (nothing is lost: the batch stays
    /// in Redis and uncommitted in Kafka). Unset: retry for ever.
    pub max_retries: Option<u32>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            max_retries: None,
        }
    }
}

impl Config {
    /// Checks every setting without connecting anywhere. The error names the key and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if !dp_buffer_redis::is_key_segment(&self.instance_id) {
            return Err(format!(
                "instance_id: `{}` must be 1-128 of [A-Za-z0-9._-] (it is part of Redis keys)",
                self.instance_id
            ));
        }
        if self.http.enabled && self.http.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "http.address: `{}` is not an IP address and port such as 0.0.0.0:9000",
                self.http.address
            ));
        }
        self.kafka.validate()?;
        if !self.dead_letter.mysql && !self.dead_letter.kafka {
            return Err("dead_letter.mysql / dead_letter.kafka: at least one destination must be on".into());
        }
        if self.dead_letter.kafka {
            for topic in &self.kafka.topics {
                let dlq = dp_source_kafka::dead_letter_topic(&self.dead_letter.kafka_topic, topic);
                if !dp_source_kafka::is_topic_name(&dlq) {
                    return Err(format!(
                        "dead_letter.kafka_topic: `{dlq}` (for topic {topic}) is not a valid topic name (1-249 of [a-zA-Z0-9._-]; `{{topic}}` stands for the source topic)"
                    ));
                }
                if self.kafka.topics.contains(&dlq) {
                    return Err(format!(
                        "dead_letter.kafka_topic: `{dlq}` is also a source topic; dead letters would be consumed again"
                    ));
                }
            }
        }
        self.redis.validate()?;
        self.mysql.validate()?;
        for (i, route) in self.mysql.routes.iter().enumerate() {
            if !self.kafka.topics.contains(&route.topic) {
                return Err(format!(
                    "mysql.routes[{i}].topic: `{}` is not one of kafka.topics {:?}; add it there, or remove the route",
                    route.topic, self.kafka.topics
                ));
            }
        }
        if self.buffer.max_rows == 0 {
            return Err("buffer.max_rows: must be at least 1".into());
        }
        if self.buffer.max_rows > 100_000 {
            return Err("buffer.max_rows: at most 100000 (memory holds two batches of this size)".into());
        }
        if self.buffer.flush_interval.is_zero() {
            return Err("buffer.flush_interval: must be greater than zero, e.g. \"30s\"".into());
        }
        if self.buffer.max_buffered_rows() < 2 * self.buffer.max_rows {
            return Err(format!(
                "buffer.max_buffered_rows: must be at least 2 × buffer.max_rows = {} (that value turns holding batches in Redis only off)",
                2 * self.buffer.max_rows
            ));
        }
        if self.buffer.max_buffered_bytes.as_u64() == 0 {
            return Err("buffer.max_buffered_bytes: must be greater than zero, e.g. \"256 MiB\"".into());
        }
        if self.buffer.flush_interval > Duration::from_secs(24 * 3600) {
            return Err("buffer.flush_interval: at most 24h".into());
        }
        if self.retry.max_backoff > Duration::from_secs(24 * 3600) {
            return Err("retry.max_backoff: at most 24h".into());
        }
        if self.shutdown_timeout > Duration::from_secs(3600) {
            return Err("shutdown_timeout: at most 1h".into());
        }
        if self.retry.initial_backoff.is_zero() || self.retry.max_backoff < self.retry.initial_backoff {
            return Err(
                "retry.initial_backoff / retry.max_backoff: need 0 < initial_backoff <= max_backoff".into()
            );
        }
        if !(self.retry.multiplier >= 1.0 && self.retry.multiplier.is_finite()) {
            return Err("retry.multiplier: must be a number >= 1".into());
        }
        if self.shutdown_timeout.is_zero() {
            return Err("shutdown_timeout: must be greater than zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config { instance_id: "pod-0".into(), ..Config::default() }
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = valid();
        c.validate().expect("defaults validate");
        assert_eq!(c.buffer.max_rows, 1000);
        assert_eq!(c.buffer.flush_interval, Duration::from_secs(30));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(c.buffer.max_buffered_rows(), 100_000);
    }

    #[test]
    fn the_outage_limit_follows_a_large_batch_size_unless_set() {
        let mut c = valid();
        c.buffer.max_rows = 100_000;
        c.validate().expect("the largest batch size is valid on its own");
        assert_eq!(c.buffer.max_buffered_rows(), 200_000);
        c.buffer.max_buffered_rows = Some(150_000);
        assert!(c.validate().expect_err("below two batches").starts_with("buffer.max_buffered_rows"));
    }

    #[test]
    fn each_invalid_setting_names_its_key() {
        type Mutation = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("instance_id", Box::new(|c| c.instance_id = "a:b".into())),
            ("instance_id", Box::new(|c| c.instance_id = String::new())),
            ("buffer.max_rows", Box::new(|c| c.buffer.max_rows = 0)),
            ("buffer.flush_interval", Box::new(|c| c.buffer.flush_interval = Duration::ZERO)),
            ("dead_letter.mysql", Box::new(|c| c.dead_letter.mysql = false)),
            (
                "dead_letter.kafka_topic",
                Box::new(|c| {
                    c.dead_letter.kafka = true;
                    c.dead_letter.kafka_topic = "{topic}".into();
                }),
            ),
            (
                "dead_letter.kafka_topic",
                Box::new(|c| {
                    c.dead_letter.kafka = true;
                    c.dead_letter.kafka_topic = "dlq for {topic}".into();
                }),
            ),
            ("buffer.max_buffered_rows", Box::new(|c| c.buffer.max_buffered_rows = Some(1_999))),
            ("buffer.max_buffered_bytes", Box::new(|c| c.buffer.max_buffered_bytes = ByteSize::b(0))),
            ("retry.multiplier", Box::new(|c| c.retry.multiplier = 0.5)),
            ("retry.initial_backoff", Box::new(|c| c.retry.initial_backoff = Duration::ZERO)),
            ("shutdown_timeout", Box::new(|c| c.shutdown_timeout = Duration::ZERO)),
            ("mysql.table", Box::new(|c| c.mysql.table = "x`; DROP".into())),
            ("kafka.topics", Box::new(|c| c.kafka.topics.clear())),
            ("redis.url", Box::new(|c| c.redis.url = dp_core::SecretUrl::new("nope"))),
            (
                "mysql.routes[0].topic",
                Box::new(|c| {
                    c.mysql.routes = vec![dp_sink_mysql::RouteConfig {
                        topic: "not-consumed".into(),
                        table: "other".into(),
                        columns: Vec::new(),
                        write: Default::default(),
                    }]
                }),
            ),
            ("mysql.write", Box::new(|c| c.mysql.write.mode = dp_sink_mysql::columns::WriteMode::Upsert)),
        ];
        for (key, mutate) in cases {
            let mut c = valid();
            mutate(&mut c);
            let err = c.validate().expect_err(key);
            assert!(err.starts_with(key), "expected an error naming {key}, got: {err}");
        }
    }
}
