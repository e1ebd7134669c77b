//! The built-in delivery-event table: a preset of declared columns, compiled, written, created
//! and checked like any other.
//!
//! The payload is a JSON object such as
//! `{"event_id": "…", "tracking_id": "…", "status": "IN_TRANSIT", "event_time": "2026-11-24T10:15:30.123Z"}`.
//! Every field is optional; the whole payload is stored untouched. Without an `event_id` (the
//! field name is configurable) the row's id is the record's [`kafka_uuid`](super::kafka_uuid),
//! so a redelivered record maps to the same id.

use super::compile::{ColumnMapping, Layout};
use super::settings::{ColumnConfig, ColumnType, WriteConfig};

/// Width of `event_id`, in characters.
pub const EVENT_ID_MAX: usize = 64;
/// Width of `tracking_id`.
pub const TRACKING_ID_MAX: usize = 64;
/// Width of `status`.
pub const STATUS_MAX: usize = 32;
/// Width of `kafka_topic`: Kafka's longest topic name.
pub const TOPIC_MAX: usize = 249;

/// The built-in table's columns, in statement order; `event_id_field` names the payload field
/// holding the idempotency key.
pub fn builtin_columns(event_id_field: &str) -> Vec<ColumnConfig> {
    let pointer = |name: &str, field: &str, kind: ColumnType, max_length: Option<usize>| ColumnConfig {
        max_length,
        // RFC 6901 escapes, so any field name is one segment.
        ..ColumnConfig::pointer(name, &format!("/{}", field.replace('~', "~0").replace('/', "~1")), kind)
    };
    let computed = ColumnConfig::computed;
    vec![
        ColumnConfig {
            fallback: Some("kafka_uuid".into()),
            ..pointer("event_id", event_id_field, ColumnType::String, Some(EVENT_ID_MAX))
        },
        pointer("tracking_id", "tracking_id", ColumnType::String, Some(TRACKING_ID_MAX)),
        pointer("status", "status", ColumnType::String, Some(STATUS_MAX)),
        pointer("event_time", "event_time", ColumnType::Timestamp, None),
        computed("payload", "payload"),
        ColumnConfig { max_length: Some(TOPIC_MAX), ..computed("kafka_topic", "kafka_topic") },
        computed("kafka_partition", "kafka_partition"),
        computed("kafka_offset", "kafka_offset"),
        computed("kafka_timestamp", "kafka_timestamp"),
    ]
}

impl ColumnMapping {
    /// The built-in table's mapping: [`builtin_columns`], inserted idempotently on `event_id`;
    /// the table has a surrogate `id` primary key, `event_id` as its unique key, an index for
    /// looking a shipment up, and `ingested_at` filled by the server.
    pub fn builtin(event_id_field: &str, max_payload_bytes: usize) -> Result<Self, String> {
        let write = WriteConfig { key: vec!["event_id".into()], ..WriteConfig::default() };
        let mut m = Self::compile("mysql", &builtin_columns(event_id_field), &write, max_payload_bytes)?;
        m.layout = Layout {
            leading: vec![("id", "BIGINT UNSIGNED NOT NULL AUTO_INCREMENT")],
            trailing: vec![("ingested_at", "DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)")],
            primary_key: Some(vec!["id"]),
            key_name: Some("uq_event_id"),
            indexes: vec![("ix_tracking_id", vec!["tracking_id", "event_time"])],
            key_optional: true,
        };
        Ok(m)
    }
}
