use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use serde::{Deserialize, Deserializer, Serialize};

/// Settings of the Kafka source (`[kafka]` in the config file, `DP_KAFKA__*` in the environment).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Topics to consume; in the environment a comma-separated list.
    #[serde(deserialize_with = "string_or_list")]
    pub topics: Vec<String>,
    /// Consumer group id.
    pub group_id: String,
    /// Consumer-group session timeout: a member silent this long is evicted.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often stored (durable) offsets are committed to Kafka.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// After the first record of a poll arrives, how long to keep collecting records that
    /// arrive right behind it, so they share one write to the buffer.
    #[serde(with = "humantime_serde")]
    pub poll_linger: Duration,
    /// On a rebalance, how long revoked partitions wait for what is buffered of them to be
    /// delivered and committed before they are let go. Must be below `session_timeout`.
    #[serde(with = "humantime_serde")]
    pub revocation_timeout: Duration,
    /// Extra librdkafka settings (e.g. `"security.protocol" = "ssl"`). The settings this source
    /// relies on for its guarantees cannot be overridden here.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSourceConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topics: vec!["delivery-events".into()],
            group_id: "delivery-pipeline".into(),
            session_timeout: Duration::from_secs(30),
            commit_interval: Duration::from_secs(5),
            poll_linger: Duration::from_millis(10),
            revocation_timeout: Duration::from_secs(10),
            properties: BTreeMap::new(),
        }
    }
}

/// Settings the source sets itself; overriding them would break its delivery guarantee.
const RESERVED: &[&str] = &[
    "enable.auto.offset.store",
    "enable.auto.commit",
    "group.id",
    "bootstrap.servers",
    "enable.partition.eof",
];

impl KafkaSourceConfig {
    /// Checks the settings without connecting. Errors name the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("kafka.brokers: must not be empty; set it to host:port[,host:port…]".into());
        }
        for b in self.brokers.split(',') {
            let b = b.trim();
            let port_ok = b.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!("kafka.brokers: `{b}` is not host:port"));
            }
        }
        if self.topics.is_empty() {
            return Err("kafka.topics: at least one topic is required".into());
        }
        for t in &self.topics {
            if !is_topic_name(t) {
                return Err(format!(
                    "kafka.topics: `{t}` is not a valid topic name (1-249 of [a-zA-Z0-9._-])"
                ));
            }
        }
        if self.group_id.trim().is_empty() {
            return Err("kafka.group_id: must not be empty".into());
        }
        if self.session_timeout < Duration::from_secs(1) {
            return Err("kafka.session_timeout: must be at least 1s".into());
        }
        if self.poll_linger > Duration::from_secs(10) {
            return Err("kafka.poll_linger: at most 10s".into());
        }
        if self.session_timeout > Duration::from_secs(3600)
            || self.commit_interval > Duration::from_secs(3600)
        {
            return Err("kafka.session_timeout / kafka.commit_interval: at most 1h".into());
        }
        if self.revocation_timeout >= self.session_timeout {
            return Err(format!(
                "kafka.revocation_timeout: {:?} must be below kafka.session_timeout ({:?})",
                self.revocation_timeout, self.session_timeout
            ));
        }
        if self.commit_interval.is_zero() {
            return Err("kafka.commit_interval: must be greater than zero".into());
        }
        if let Some(k) = self.properties.keys().find(|k| RESERVED.contains(&k.as_str())) {
            return Err(format!(
                "kafka.properties.{k}: set by delivery-pipeline itself and cannot be overridden"
            ));
        }
        Ok(())
    }

    /// The librdkafka configuration for a consumer.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", self.commit_interval.as_millis().to_string())
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", self.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (self.session_timeout.as_millis() / 3).max(100).to_string())
            // Broker reachability and consumer lag come from these statistics.
            .set("statistics.interval.ms", "5000")
            // librdkafka prefetches up to 64 MiB by default; 16 MiB (~30,000 events of 500 bytes,
            // a second of work at full speed) keeps the same throughput with a smaller, flatter
            // memory footprint (docs/PERFORMANCE.md). `properties` may override it.
            .set("queued.max.messages.kbytes", "16384");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// Whether `name` is a valid Kafka topic name: 1-249 of `[a-zA-Z0-9._-]`.
pub fn is_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Accepts a list, or a comma-separated string (as environment variables give).
pub fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Either::deserialize(d)? {
        Either::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
        Either::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        KafkaSourceConfig::default().validate().expect("defaults validate");
    }

    #[test]
    fn invalid_settings_name_their_key() {
        let bad = |f: &dyn Fn(&mut KafkaSourceConfig)| {
            let mut c = KafkaSourceConfig::default();
            f(&mut c);
            c.validate().expect_err("must be rejected")
        };
        assert!(bad(&|c| c.brokers = "localhost".into()).starts_with("kafka.brokers"));
        assert!(bad(&|c| c.topics = vec![]).starts_with("kafka.topics"));
        assert!(bad(&|c| c.topics = vec!["a b".into()]).starts_with("kafka.topics"));
        assert!(bad(&|c| c.group_id = " ".into()).starts_with("kafka.group_id"));
        assert!(bad(&|c| c.revocation_timeout = c.session_timeout).starts_with("kafka.revocation_timeout"));
        assert!(
            bad(&|c| {
                c.properties.insert("enable.auto.offset.store".into(), "true".into());
            })
            .starts_with("kafka.properties.enable.auto.offset.store")
        );
    }

    #[test]
    fn the_guarantee_settings_are_fixed() {
        let c = KafkaSourceConfig::default().client_config();
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
    }
}
