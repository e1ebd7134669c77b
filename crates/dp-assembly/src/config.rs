//! The configuration of the default pipeline, as plain serde data: the Kafka, Redis and MySQL
//! sections, dead letters, and the runtime's own settings (`[buffer]`, `[retry]`,
//! `shutdown_timeout`, `commit_policy`).
//!
//! Loading (file, environment) is the binary's job; this module only defines the shape, the
//! defaults and a pure [`Config::validate`]. Every section rejects unknown keys.

use std::sync::Arc;
use std::time::Duration;

use dp_buffer_redis::RedisBufferConfig;
use dp_pipeline::{BatchingConfig, CommitPolicy, InvalidSetting, PipelineOptions, RetryConfig};
use dp_sink_mysql::MysqlSinkConfig;

use crate::filter::{FilterConfig, Filters};
use dp_schema_registry::SchemaRegistryConfig;
use dp_source_kafka::KafkaSourceConfig;
use serde::{Deserialize, Serialize};

/// Everything the default pipeline needs.
///
/// Every section refuses keys it does not know. The top level does not: a host keeps sections
/// of its own beside these in one file (the `delivery-pipeline` binary adds `[log]` and
/// `[http]`) and checks the top-level keys itself, against [`Config::KEYS`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
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
    pub buffer: BatchingConfig,
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
    /// `[[filter]]` rules: records to drop before they are written ahead or stored.
    pub filter: Vec<FilterConfig>,
    /// The Schema Registry that `format`/`key_format` other than `json` read schemas from.
    pub schema_registry: SchemaRegistryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            instance_id: String::new(),
            kafka: KafkaSourceConfig::default(),
            redis: RedisBufferConfig::default(),
            mysql: MysqlSinkConfig::default(),
            buffer: BatchingConfig::default(),
            dead_letter: DeadLetterConfig::default(),
            retry: RetryConfig::default(),
            shutdown_timeout: Duration::from_secs(25),
            commit_policy: CommitPolicy::AfterSink,
            allow_volatile_buffer: false,
            filter: Vec::new(),
            schema_registry: SchemaRegistryConfig::default(),
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

impl Config {
    /// The top-level keys of this configuration, for a host's check of its file.
    pub const KEYS: &[&str] = &[
        "instance_id",
        "kafka",
        "redis",
        "mysql",
        "buffer",
        "dead_letter",
        "retry",
        "shutdown_timeout",
        "commit_policy",
        "allow_volatile_buffer",
        "filter",
        "schema_registry",
    ];

    /// The runtime's settings of this configuration, the `[[filter]]` rules compiled.
    pub fn options(&self) -> Result<PipelineOptions, InvalidSetting> {
        let options = PipelineOptions::new()
            .buffer(self.buffer.clone())
            .retry(self.retry.clone())
            .shutdown_timeout(self.shutdown_timeout)
            .commit_policy(self.commit_policy);
        Ok(match Filters::compile(&self.filter)? {
            Some(filters) => options.filter(Arc::new(filters)),
            None => options,
        })
    }

    /// Checks every setting without connecting anywhere. The error names the key and the fix.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !dp_buffer_redis::is_key_segment(&self.instance_id) {
            return Err(InvalidSetting::new(
                "instance_id",
                format!("`{}` must be 1-128 of [A-Za-z0-9._-] (it is part of Redis keys)", self.instance_id),
            ));
        }
        self.kafka.validate().map_err(|e| InvalidSetting::from_line(&e))?;
        if !self.dead_letter.mysql && !self.dead_letter.kafka {
            return Err(InvalidSetting::new(
                "dead_letter.mysql",
                "dead_letter.mysql / dead_letter.kafka: at least one destination must be on",
            ));
        }
        if self.dead_letter.kafka {
            for topic in &self.kafka.topics {
                let dlq = dp_source_kafka::dead_letter_topic(&self.dead_letter.kafka_topic, topic);
                if !dp_source_kafka::is_topic_name(&dlq) {
                    return Err(InvalidSetting::new(
                        "dead_letter.kafka_topic",
                        format!(
                            "`{dlq}` (for topic {topic}) is not a valid topic name (1-249 of [a-zA-Z0-9._-]; `{{topic}}` stands for the source topic)"
                        ),
                    ));
                }
                if self.kafka.topics.contains(&dlq) {
                    return Err(InvalidSetting::new(
                        "dead_letter.kafka_topic",
                        format!("`{dlq}` is also a source topic; dead letters would be consumed again"),
                    ));
                }
            }
        }
        self.redis.validate().map_err(|e| InvalidSetting::from_line(&e))?;
        self.mysql.validate().map_err(|e| InvalidSetting::from_line(&e))?;
        if let Some(key) = self.mysql.registry_formats().first()
            && !self.schema_registry.is_set()
        {
            return Err(InvalidSetting::new(
                key.clone(),
                "reads a Schema Registry format, but schema_registry.url is not set",
            ));
        }
        if self.schema_registry.is_set() {
            self.schema_registry.validate().map_err(|e| InvalidSetting::from_line(&e))?;
        }
        for (i, route) in self.mysql.routes.iter().enumerate() {
            if !self.kafka.topics.contains(&route.topic) {
                return Err(InvalidSetting::new(
                    format!("mysql.routes[{i}].topic"),
                    format!(
                        "`{}` is not one of kafka.topics {:?}; add it there, or remove the route",
                        route.topic, self.kafka.topics
                    ),
                ));
            }
        }
        self.options()?.validate()
    }
}

#[cfg(test)]
mod tests {
    use bytesize::ByteSize;

    use super::*;

    fn valid() -> Config {
        Config { instance_id: "pod-0".into(), ..Config::default() }
    }

    #[test]
    fn the_key_list_names_every_top_level_field() {
        let value = serde_json::to_value(Config::default()).expect("serializes");
        let mut fields: Vec<&str> =
            value.as_object().expect("an object").keys().map(String::as_str).collect();
        fields.sort_unstable();
        let mut keys = Config::KEYS.to_vec();
        keys.sort_unstable();
        assert_eq!(fields, keys);
    }

    /// The runtime's own checks are `dp_pipeline`'s (`options.rs`); here, that the file's
    /// sections reach them unchanged.
    #[test]
    fn defaults_validate_and_reach_the_runtime() {
        let c = valid();
        c.validate().expect("defaults validate");
        let o = c.options().expect("valid");
        assert_eq!((o.buffer.max_rows, o.buffer.flush_interval), (1000, Duration::from_secs(30)));
        assert_eq!(o.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(o.commit_policy, CommitPolicy::AfterSink);
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
                        ..Default::default()
                    }]
                }),
            ),
            ("mysql.write", Box::new(|c| c.mysql.write.mode = dp_sink_mysql::mapping::WriteMode::Upsert)),
            ("mysql.format", Box::new(|c| c.mysql.format = dp_schema_registry::Format::Avro)),
            (
                "mysql.routes[0].key_format",
                Box::new(|c| {
                    c.mysql.routes = vec![dp_sink_mysql::RouteConfig {
                        topic: c.kafka.topics[0].clone(),
                        table: "other".into(),
                        key_format: dp_schema_registry::Format::Protobuf,
                        ..Default::default()
                    }]
                }),
            ),
            (
                "schema_registry.url",
                Box::new(|c| {
                    c.mysql.format = dp_schema_registry::Format::JsonSchema;
                    c.schema_registry.url = vec!["registry:8081".into()];
                }),
            ),
        ];
        for (key, mutate) in cases {
            let mut c = valid();
            mutate(&mut c);
            let err = c.validate().expect_err(key);
            assert_eq!(err.key, key, "expected an error naming {key}, got: {err}");
        }
    }
}
