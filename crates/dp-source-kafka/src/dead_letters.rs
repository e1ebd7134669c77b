//! Dead letters to a Kafka topic.
//!
//! [`KafkaDeadLetters`] publishes each entry to the dead-letter topic of its source topic
//! (`<topic>.dlq` unless configured otherwise) with the original key and value bytes unchanged
//! (a tombstone stays a tombstone), the original headers, and these headers added:
//!
//! | header | value |
//! |---|---|
//! | `dp.original.topic` / `dp.original.partition` / `dp.original.offset` | where the message was read |
//! | `dp.original.timestamp` | its Kafka timestamp, milliseconds since the epoch (absent when it had none) |
//! | `dp.error.class` | the machine-readable class (`invalid_json`, `field_too_long`, `sink_rejected`, …) |
//! | `dp.error.reason` | the human-readable reason |
//! | `dp.error.code` / `dp.error.sqlstate` | MySQL's error number and SQLSTATE, when MySQL refused it |
//! | `dp.failed.at` | when it was dead-lettered (its first and last failure), milliseconds since the epoch |
//! | `dp.attempts` | `1` (`dlq replay` counts further attempts in the MySQL table only) |
//!
//! The producer waits for every in-sync replica (`acks=all`); the MySQL sink publishes before it
//! commits the batch, so an entry is published at least once (a crash before the commit repeats
//! it; the coordinates headers identify repeats).

use std::time::Duration;

use async_trait::async_trait;
use dp_core::{DeadLetter, DeadLetterPublisher, SinkError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::{KafkaSourceConfig, KafkaSourceError};

/// How long one publish may take before it counts as a (transient) failure.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes dead letters to Kafka topics; see the module documentation for the format.
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    template: String,
    brokers: String,
    /// The admin client's configuration: the same brokers and security as the producer.
    admin: ClientConfig,
}

impl KafkaDeadLetters {
    /// A producer to the brokers of `config` (with its `properties`, TLS and SASL settings),
    /// writing each dead letter to `template` with `{topic}` replaced by its source topic.
    pub fn new(config: &KafkaSourceConfig, template: &str) -> Result<Self, KafkaSourceError> {
        let mut c = config.common_client_config().map_err(KafkaSourceError::Setting)?;
        c.set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string());
        let producer: FutureProducer = c
            .create()
            .map_err(|source| KafkaSourceError::Create { brokers: config.brokers.clone(), source })?;
        let admin = config.common_client_config().map_err(KafkaSourceError::Setting)?;
        Ok(Self { producer, template: template.to_owned(), brokers: config.brokers.clone(), admin })
    }

    /// The dead-letter topic of `source_topic`.
    pub fn topic_for(&self, source_topic: &str) -> String {
        dead_letter_topic(&self.template, source_topic)
    }

    /// Creates the dead-letter topic of each of `source_topics` that does not exist yet, with as
    /// many partitions as its source topic and the broker's default replication.
    pub async fn ensure_topics(&self, source_topics: &[String]) -> Result<(), KafkaSourceError> {
        let timeout = Duration::from_secs(10);
        let unreachable = |source| KafkaSourceError::Unreachable {
            brokers: self.brokers.clone(),
            timeout,
            source: Box::new(source),
            hint: crate::hint(None),
        };
        let mut wanted = Vec::new();
        for source in source_topics {
            let metadata =
                self.producer.client().fetch_metadata(Some(source), timeout).map_err(unreachable)?;
            let partitions = metadata.topics().first().map_or(1, |t| t.partitions().len().max(1));
            wanted.push((self.topic_for(source), i32::try_from(partitions).unwrap_or(1)));
        }
        let admin: AdminClient<DefaultClientContext> = self
            .admin
            .create()
            .map_err(|source| KafkaSourceError::Create { brokers: self.brokers.clone(), source })?;
        let news: Vec<NewTopic<'_>> =
            wanted.iter().map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(-1))).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Timeout::After(timeout)));
        let results = admin.create_topics(&news, &opts).await.map_err(unreachable)?;
        for result in results {
            match result {
                Ok(topic) => tracing::info!(topic, "created the dead-letter topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaSourceError::DeadLetterTopic { topic, reason: code.to_string() });
                }
            }
        }
        Ok(())
    }
}

/// `template` with `{topic}` replaced by `source_topic`.
pub fn dead_letter_topic(template: &str, source_topic: &str) -> String {
    template.replace("{topic}", source_topic)
}

/// The headers of a dead letter's message: the original ones, then ours.
fn headers(entry: &DeadLetter, failed_at: i64) -> OwnedHeaders {
    let r = &entry.record;
    let mut h = OwnedHeaders::new_with_capacity(r.headers.len() + 10);
    for original in &r.headers {
        h = h.insert(Header { key: &original.name, value: original.value.as_deref() });
    }
    let mut ours: Vec<(&str, String)> = vec![
        ("dp.original.topic", r.topic.to_string()),
        ("dp.original.partition", r.partition.to_string()),
        ("dp.original.offset", r.offset.to_string()),
        ("dp.error.class", entry.error_class.clone()),
        ("dp.error.reason", entry.reason.clone()),
        ("dp.failed.at", failed_at.to_string()),
        // Published once per failure: this is the first and the only attempt recorded.
        ("dp.attempts", "1".to_owned()),
    ];
    if let Some(ts) = r.timestamp_ms {
        ours.push(("dp.original.timestamp", ts.to_string()));
    }
    if let Some(code) = entry.code {
        ours.push(("dp.error.code", code.to_string()));
    }
    if let Some(state) = &entry.sqlstate {
        ours.push(("dp.error.sqlstate", state.clone()));
    }
    for (key, value) in &ours {
        h = h.insert(Header { key, value: Some(value.as_bytes()) });
    }
    h
}

#[async_trait]
impl DeadLetterPublisher for KafkaDeadLetters {
    async fn publish(&self, entries: &[DeadLetter]) -> Result<(), SinkError> {
        if entries.is_empty() {
            return Ok(());
        }
        let failed_at = dp_core::unix_millis();
        let topics: Vec<String> = entries.iter().map(|e| self.topic_for(&e.record.topic)).collect();
        let sends = entries.iter().zip(&topics).map(|(entry, topic)| {
            let r = &entry.record;
            let mut message = FutureRecord::<[u8], [u8]>::to(topic).headers(headers(entry, failed_at));
            if let Some(key) = r.key.as_deref() {
                message = message.key(key);
            }
            if let Some(payload) = r.payload.as_deref() {
                message = message.payload(payload);
            }
            if let Some(ts) = r.timestamp_ms {
                message = message.timestamp(ts);
            }
            self.producer.send(message, Timeout::After(DELIVERY_TIMEOUT))
        });
        for (result, topic) in futures::future::join_all(sends).await.into_iter().zip(&topics) {
            if let Err((e, _)) = result {
                return Err(SinkError::transient(format!(
                    "publishing a dead letter to kafka topic {topic} failed"
                ))
                .with_source(e));
            }
        }
        metrics::counter!("dp_dead_letters_published_total").increment(entries.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use dp_core::Record;
    use rdkafka::message::Headers;

    use super::*;

    #[test]
    fn topic_template_names_the_source_topic() {
        assert_eq!(dead_letter_topic("{topic}.dlq", "deliveries"), "deliveries.dlq");
        assert_eq!(dead_letter_topic("dead-letters", "deliveries"), "dead-letters");
    }

    #[test]
    fn headers_keep_the_originals_and_add_reason_and_coordinates() {
        let mut record = Record::new("t", 3, 42, Some(b"\xff not utf-8".to_vec()));
        record.timestamp_ms = Some(1_700_000_000_000);
        record.headers.push(dp_core::Header { name: "trace".into(), value: Some(vec![0xfe, 0x00]) });
        let entry = DeadLetter {
            record,
            error_class: "sink_rejected".into(),
            code: Some(1406),
            sqlstate: Some("22001".into()),
            reason: "Data too long".into(),
        };
        let h = headers(&entry, 7);
        let get = |name: &str| h.iter().find(|x| x.key == name).and_then(|x| x.value).map(<[u8]>::to_vec);
        assert_eq!(get("trace"), Some(vec![0xfe, 0x00]));
        assert_eq!(get("dp.original.partition"), Some(b"3".to_vec()));
        assert_eq!(get("dp.original.offset"), Some(b"42".to_vec()));
        assert_eq!(get("dp.original.timestamp"), Some(b"1700000000000".to_vec()));
        assert_eq!(get("dp.error.code"), Some(b"1406".to_vec()));
        assert_eq!(get("dp.error.sqlstate"), Some(b"22001".to_vec()));
        assert_eq!(get("dp.error.class"), Some(b"sink_rejected".to_vec()));
        assert_eq!(get("dp.failed.at"), Some(b"7".to_vec()));
        assert_eq!(get("dp.attempts"), Some(b"1".to_vec()));
    }
}
