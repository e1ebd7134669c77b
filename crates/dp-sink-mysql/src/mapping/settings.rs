//! The settings of a table's columns and writes, as the config file spells them.

use serde::{Deserialize, Serialize};

/// One column of a declarative mapping (`[[mysql.columns]]`, `[[mysql.routes.columns]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// The column's name in the table.
    pub name: String,
    /// Where the value is in the payload: a JSON pointer (RFC 6901) such as `/status` or
    /// `/address/city`. Exactly one of `pointer` and `computed` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// A value computed from the record instead: `ingest_time`, `kafka_topic`,
    /// `kafka_partition`, `kafka_offset`, `kafka_timestamp`, `kafka_key`, `kafka_uuid`, `payload`
    /// (the whole value, as JSON) or `header:<name>` (a header's value, converted to `type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computed: Option<String>,
    /// Pointer columns: a computed value (one of those `computed` takes) used when the
    /// pointer finds no value. `kafka_uuid` — the UUID v5 of the record's topic, partition and
    /// offset, the same on every redelivery — gives a record without an id a stable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// `string`, `integer`, `decimal`, `boolean`, `timestamp` or `json`. Required for pointers
    /// and headers; other computed columns have their natural type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ColumnType>,
    /// Strings: the most characters (default 255); longer values are dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Decimals: total digits (1-65), required for `decimal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<u32>,
    /// Decimals: digits after the point (default 0, at most 30 and `precision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    /// Timestamps: `rfc3339` (default), `unix_seconds`, `unix_millis`, or a `time` format
    /// description such as `[year]-[month]-[day] [hour]:[minute]:[second]` (read as UTC unless
    /// it has an offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A record without this value (absent or JSON `null`) is dead-lettered.
    #[serde(default)]
    pub required: bool,
    /// The value used when the record has none, written as it would appear in the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
}

impl ColumnConfig {
    /// A column read from the payload at `pointer`, of type `kind`; every other setting unset.
    pub fn pointer(name: &str, pointer: &str, kind: ColumnType) -> Self {
        Self { pointer: Some(pointer.into()), kind: Some(kind), ..Self::computed(name, "") }
    }

    /// A column computed from the record (`kafka_offset`, `payload`, …), of its natural type;
    /// every other setting unset.
    pub fn computed(name: &str, what: &str) -> Self {
        Self {
            name: name.into(),
            pointer: None,
            computed: (!what.is_empty()).then(|| what.into()),
            fallback: None,
            kind: None,
            max_length: None,
            precision: None,
            scale: None,
            format: None,
            required: false,
            default: None,
        }
    }
}

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Text up to `max_length` characters: `VARCHAR(n)`.
    String,
    /// A 64-bit signed integer: `BIGINT`.
    Integer,
    /// An exact decimal: `DECIMAL(precision, scale)`; from a JSON number or numeric string.
    Decimal,
    /// `true`/`false`: `BOOLEAN`.
    Boolean,
    /// A point in time, stored in UTC with milliseconds: `DATETIME(3)`.
    Timestamp,
    /// Any JSON value, stored as its text: `JSON`.
    Json,
}

impl ColumnType {
    /// The name with its article, for messages: "a string", "an integer".
    pub(crate) fn article(self) -> &'static str {
        match self {
            Self::String => "a string",
            Self::Integer => "an integer",
            Self::Decimal => "a decimal",
            Self::Boolean => "a boolean",
            Self::Timestamp => "a timestamp",
            Self::Json => "JSON",
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Decimal => "decimal",
            Self::Boolean => "boolean",
            Self::Timestamp => "timestamp",
            Self::Json => "json",
        }
    }
}

/// How rows are written to a table (`[mysql.write]`, `[mysql.routes.write]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriteConfig {
    /// `insert` (default): a row whose key exists is left alone, so a replay changes nothing.
    /// `upsert`: a row whose key exists takes the new values (subject to `guard`).
    pub mode: WriteMode,
    /// The columns of the table's primary or unique key that identifies a row (for example
    /// `["event_id"]`, or `["tracking_id"]` to keep the latest state per shipment). Required
    /// with declared columns; `migrate` makes it the primary key.
    pub key: Vec<String>,
    /// Upserts only: a column (integer or timestamp, such as `event_time` or a sequence
    /// number) that must grow for an update to apply. A late or replayed event then never
    /// moves a row backwards.
    pub guard: Option<String>,
    /// Upserts only: what a tombstone (a record whose value is null) does. `none` (default):
    /// it is dead-lettered as `null_value`. `tombstone`: it deletes the row its Kafka key
    /// names (the key's text for a one-column key, or a JSON object with a field per key
    /// column); with `guard`, only when the stored row is not newer than the tombstone.
    pub delete: DeleteMode,
    /// With `delete = "tombstone"`: instead of deleting the row, set this column — a nullable
    /// `DATETIME(3)` the table has besides the declared columns — to the tombstone's Kafka
    /// timestamp. An upsert that applies later sets it back to NULL.
    pub soft_delete_column: Option<String>,
}

/// What a tombstone does to a table (`write.delete`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteMode {
    /// Tombstones are dead-lettered (`null_value`).
    #[default]
    None,
    /// A tombstone deletes the row its Kafka key names.
    Tombstone,
}

/// Whether an existing row is kept or replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Insert new rows; leave existing ones untouched (idempotent).
    #[default]
    Insert,
    /// Insert new rows; update existing ones (only with a newer guard, when one is set).
    Upsert,
}
