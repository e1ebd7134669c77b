//! Declarative column mapping: which part of a record goes into which column, as what type.
//!
//! A column takes its value from a JSON pointer into the payload (`/tracking_id`,
//! `/address/city`, `/items/0/sku`) or is computed from the record (`ingest_time`, the Kafka
//! coordinates, the key, a header, the whole payload). Each has a type — string with a maximum
//! length, integer, decimal, boolean, timestamp with a format, JSON — and may be required or
//! have a default. [`ColumnMapping::compile`] checks a mapping once at startup, naming the key
//! of anything wrong; [`ColumnMapping::map`] turns a record into the row's values or a
//! [`Rejection`] (the record is dead-lettered).
//!
//! The payload is read in one pass: only the fields the pointers start with are kept (as raw
//! JSON text, without building values), everything else is skipped while still being checked.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use dp_core::Record;
use mysql_async::Value;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use time::format_description::OwnedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::mapping::{DateTimeParts, MAX_JSON_DEPTH, NOT_OBJECT, Rejection, refuse_non_objects};
use crate::sql::is_identifier;

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
    /// `kafka_partition`, `kafka_offset`, `kafka_timestamp`, `kafka_key`, `payload` (the whole
    /// value, as JSON) or `header:<name>` (a header's value, converted to `type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computed: Option<String>,
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
    fn article(self) -> &'static str {
        match self {
            Self::String => "a string",
            Self::Integer => "an integer",
            Self::Decimal => "a decimal",
            Self::Boolean => "a boolean",
            Self::Timestamp => "a timestamp",
            Self::Json => "JSON",
        }
    }

    fn as_str(self) -> &'static str {
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

/// Where a column's value comes from, resolved.
#[derive(Debug, Clone)]
enum Origin {
    /// Path segments into the payload (the first one is a top-level field).
    Pointer(Vec<String>),
    IngestTime,
    KafkaTopic,
    KafkaPartition,
    KafkaOffset,
    KafkaTimestamp,
    KafkaKey,
    Payload,
    Header(String),
}

/// How a timestamp is written.
#[derive(Debug, Clone)]
enum TimeFormat {
    Rfc3339,
    UnixSeconds,
    UnixMillis,
    Custom(Box<OwnedFormatItem>),
}

/// One compiled column.
#[derive(Debug, Clone)]
pub struct Column {
    /// The column's name.
    pub name: String,
    origin: Origin,
    /// Its type.
    pub kind: ColumnType,
    /// Strings: the most characters.
    pub max_length: usize,
    /// Decimals: total digits.
    pub precision: u32,
    /// Decimals: digits after the point.
    pub scale: u32,
    format: TimeFormat,
    /// Absent values are refused.
    pub required: bool,
    default: Option<Value>,
}

impl Column {
    /// Whether the column can ever be NULL.
    pub fn nullable(&self) -> bool {
        if self.required || self.default.is_some() {
            return false;
        }
        !matches!(
            self.origin,
            Origin::IngestTime
                | Origin::KafkaTopic
                | Origin::KafkaPartition
                | Origin::KafkaOffset
                | Origin::Payload
        )
    }

    /// The column's type in `CREATE TABLE`.
    pub fn sql_type(&self) -> String {
        match self.kind {
            ColumnType::String if self.max_length <= 16_383 => format!("VARCHAR({})", self.max_length),
            ColumnType::String => "MEDIUMTEXT".into(),
            ColumnType::Integer => "BIGINT".into(),
            ColumnType::Decimal => format!("DECIMAL({},{})", self.precision, self.scale),
            ColumnType::Boolean => "BOOLEAN".into(),
            ColumnType::Timestamp => "DATETIME(3)".into(),
            ColumnType::Json => "JSON".into(),
        }
    }
}

/// A checked declarative mapping: the columns in statement order, and how rows are written.
#[derive(Debug, Clone)]
pub struct ColumnMapping {
    /// The columns, in placeholder order.
    pub columns: Vec<Column>,
    /// How rows are written.
    pub mode: WriteMode,
    /// Positions of the key columns in `columns`.
    pub key: Vec<usize>,
    /// Position of the guard column, if any.
    pub guard: Option<usize>,
    /// First segments of every pointer: the top-level fields to keep while parsing.
    top_level: Vec<String>,
    max_payload_bytes: usize,
}

/// Default `max_length` of a string column.
pub const DEFAULT_STRING_LENGTH: usize = 255;

impl ColumnMapping {
    /// Checks `columns` and `write` and compiles them. `at` names the settings for errors
    /// (`mysql`, `mysql.routes[1]`).
    pub fn compile(
        at: &str,
        columns: &[ColumnConfig],
        write: &WriteConfig,
        max_payload_bytes: usize,
    ) -> Result<Self, String> {
        if columns.is_empty() {
            return Err(format!("{at}.columns: declare at least one column"));
        }
        let mut compiled = Vec::with_capacity(columns.len());
        for (i, c) in columns.iter().enumerate() {
            let here = format!("{at}.columns[{i}] (`{}`)", c.name);
            if !is_identifier(&c.name) {
                return Err(format!(
                    "{here}: the name is not a plain identifier (1-64 of [A-Za-z0-9_], not starting with a digit)"
                ));
            }
            if compiled.iter().any(|d: &Column| d.name.eq_ignore_ascii_case(&c.name)) {
                return Err(format!("{here}: the column is declared twice"));
            }
            compiled.push(compile_column(&here, c)?);
        }
        let position = |what: &str, name: &str| {
            compiled.iter().position(|c| c.name.eq_ignore_ascii_case(name)).ok_or_else(|| {
                format!("{at}.write.{what}: `{name}` is not one of the declared columns of {at}.columns")
            })
        };
        if write.key.is_empty() {
            return Err(format!(
                "{at}.write.key: name the column(s) of the table's primary or unique key (for example [\"event_id\"]); \
                 it is what makes a replayed record a no-op"
            ));
        }
        let mut key = Vec::new();
        for k in &write.key {
            let p = position("key", k)?;
            if compiled[p].nullable() {
                return Err(format!(
                    "{at}.write.key: key column `{k}` could be NULL; make it `required = true` or give it a `default`"
                ));
            }
            if key.contains(&p) {
                return Err(format!("{at}.write.key: `{k}` is listed twice"));
            }
            key.push(p);
        }
        let guard = match &write.guard {
            None => None,
            Some(_) if write.mode == WriteMode::Insert => {
                return Err(format!(
                    "{at}.write.guard: a guard only applies to mode = \"upsert\" (inserts never change a row)"
                ));
            }
            Some(g) => {
                let p = position("guard", g)?;
                if !matches!(compiled[p].kind, ColumnType::Integer | ColumnType::Timestamp) {
                    return Err(format!(
                        "{at}.write.guard: `{g}` is {} column; a guard must be an integer or a timestamp",
                        compiled[p].kind.article()
                    ));
                }
                if key.contains(&p) {
                    return Err(format!(
                        "{at}.write.guard: `{g}` is a key column; it cannot also be the guard"
                    ));
                }
                Some(p)
            }
        };
        if write.mode == WriteMode::Upsert && key.len() == compiled.len() {
            return Err(format!(
                "{at}.write: every column is a key column, so an upsert has nothing to update"
            ));
        }
        let mut top_level: Vec<String> = Vec::new();
        for c in &compiled {
            if let Origin::Pointer(path) = &c.origin
                && !top_level.contains(&path[0])
            {
                top_level.push(path[0].clone());
            }
        }
        Ok(Self { columns: compiled, mode: write.mode, key, guard, top_level, max_payload_bytes })
    }

    /// The column names, in placeholder order.
    pub fn names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }

    /// Turns `record` into one value per column, or says why it cannot be stored.
    pub fn map(&self, record: &Record, now: OffsetDateTime) -> Result<Vec<Value>, Rejection> {
        let needs_payload =
            !self.top_level.is_empty() || self.columns.iter().any(|c| matches!(c.origin, Origin::Payload));
        let text = if needs_payload { Some(payload_text(record, self.max_payload_bytes)?) } else { None };
        let fields = match text {
            Some(t) if !self.top_level.is_empty() => parse_top_level(t, &self.top_level)?,
            _ => Vec::new(),
        };
        let mut values = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            let v = match &c.origin {
                Origin::Pointer(path) => {
                    let raw = lookup(&fields, path)?;
                    match raw {
                        Some(raw) if raw.get() != "null" => Some(from_json(c, raw.get())?),
                        _ => None,
                    }
                }
                Origin::IngestTime => Some(time_value(now, &c.name)?),
                Origin::KafkaTopic => Some(Value::from(&*record.topic)),
                Origin::KafkaPartition => Some(Value::from(record.partition)),
                Origin::KafkaOffset => Some(Value::from(record.offset)),
                Origin::KafkaTimestamp => record
                    .timestamp_ms
                    .and_then(DateTimeParts::from_unix_millis)
                    .map(|t| Value::Date(t.year, t.month, t.day, t.hour, t.minute, t.second, t.micros)),
                Origin::KafkaKey => match &record.key {
                    None => None,
                    Some(k) => Some(from_text(c, utf8(k, "the message key")?)?),
                },
                Origin::Header(name) => {
                    match record
                        .headers
                        .iter()
                        .rev()
                        .find(|h| &h.name == name)
                        .and_then(|h| h.value.as_deref())
                    {
                        None => None,
                        Some(v) => Some(from_text(c, utf8(v, &format!("header `{name}`"))?)?),
                    }
                }
                Origin::Payload => match text {
                    Some(t) if c.kind == ColumnType::Json => Some(json_text(c, t)?),
                    Some(t) => Some(from_text(c, t)?),
                    None => None,
                },
            };
            match (v, &c.default) {
                (Some(v), _) => values.push(v),
                (None, Some(d)) => values.push(d.clone()),
                (None, None) if c.required => {
                    return Err(Rejection::new(
                        "missing_field",
                        format!("column `{}` is required, but the record has no value for it", c.name),
                    ));
                }
                (None, None) => values.push(Value::NULL),
            }
        }
        Ok(values)
    }

    /// `CREATE TABLE IF NOT EXISTS` for this mapping: the declared columns, the key as the
    /// primary key.
    pub fn create_table(&self, table: &str) -> String {
        let mut lines: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                format!("  `{}` {} {}", c.name, c.sql_type(), if c.nullable() { "NULL" } else { "NOT NULL" })
            })
            .collect();
        let key: Vec<String> = self.key.iter().map(|&i| format!("`{}`", self.columns[i].name)).collect();
        lines.push(format!("  PRIMARY KEY ({})", key.join(", ")));
        format!(
            "CREATE TABLE IF NOT EXISTS `{table}` (\n{}\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            lines.join(",\n")
        )
    }

    /// Which of a batch's rows (in arrival order) to write when several share a key: the one
    /// the upsert would leave in the table. With a guard, the largest guard wins, and of equal
    /// guards the first (a later equal one would not apply); without one, the last.
    pub fn winners(&self, rows: &[&[Value]]) -> Vec<bool> {
        let mut best: HashMap<Vec<u8>, usize> = HashMap::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let mut key = Vec::new();
            for &k in &self.key {
                key_bytes(&row[k], &mut key);
            }
            match best.get_mut(&key) {
                None => {
                    best.insert(key, i);
                }
                Some(held) => {
                    let replace = match (self.guard_rank(rows[*held]), self.guard_rank(row)) {
                        _ if self.guard.is_none() => true,
                        (Some(old), Some(new)) => new > old,
                        (None, _) => true,
                        (Some(_), None) => false,
                    };
                    if replace {
                        *held = i;
                    }
                }
            }
        }
        let mut keep = vec![false; rows.len()];
        for i in best.into_values() {
            keep[i] = true;
        }
        keep
    }

    /// A comparable rank of a row's guard value (`None` without a guard or for NULL); the row
    /// with the larger rank wins.
    pub fn guard_rank(&self, values: &[Value]) -> Option<i128> {
        let v = &values[self.guard?];
        match v {
            Value::Int(i) => Some(i128::from(*i)),
            Value::UInt(u) => Some(i128::from(*u)),
            Value::Date(y, mo, d, h, mi, s, us) => {
                let days = (i128::from(*y) * 13 + i128::from(*mo)) * 32 + i128::from(*d);
                let secs = ((days * 24 + i128::from(*h)) * 60 + i128::from(*mi)) * 60 + i128::from(*s);
                Some(secs * 1_000_000 + i128::from(*us))
            }
            _ => None,
        }
    }
}

/// Appends an unambiguous encoding of a key value (tagged, length-prefixed).
fn key_bytes(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::NULL => out.push(0),
        Value::Bytes(b) => {
            out.push(1);
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
        }
        Value::Int(i) => {
            out.push(2);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::UInt(u) => {
            out.push(3);
            out.extend_from_slice(&u.to_le_bytes());
        }
        Value::Float(f) => {
            out.push(4);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Double(f) => {
            out.push(5);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Date(y, mo, d, h, mi, s, us) => {
            out.push(6);
            out.extend_from_slice(&y.to_le_bytes());
            out.extend_from_slice(&[*mo, *d, *h, *mi, *s]);
            out.extend_from_slice(&us.to_le_bytes());
        }
        Value::Time(neg, d, h, mi, s, us) => {
            out.push(7);
            out.extend_from_slice(&[u8::from(*neg), *h, *mi, *s]);
            out.extend_from_slice(&d.to_le_bytes());
            out.extend_from_slice(&us.to_le_bytes());
        }
    }
}

fn compile_column(here: &str, c: &ColumnConfig) -> Result<Column, String> {
    let origin = match (&c.pointer, &c.computed) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(format!("{here}: set exactly one of `pointer` and `computed`"));
        }
        (Some(p), None) => {
            Origin::Pointer(parse_pointer(p).map_err(|e| format!("{here}: pointer `{p}` {e}"))?)
        }
        (None, Some(what)) => match what.as_str() {
            "ingest_time" => Origin::IngestTime,
            "kafka_topic" => Origin::KafkaTopic,
            "kafka_partition" => Origin::KafkaPartition,
            "kafka_offset" => Origin::KafkaOffset,
            "kafka_timestamp" => Origin::KafkaTimestamp,
            "kafka_key" => Origin::KafkaKey,
            "payload" => Origin::Payload,
            h if h.starts_with("header:") && h.len() > "header:".len() => {
                Origin::Header(h["header:".len()..].to_owned())
            }
            other => {
                return Err(format!(
                    "{here}: computed = `{other}` is not one of ingest_time, kafka_topic, kafka_partition, kafka_offset, \
                     kafka_timestamp, kafka_key, payload, header:<name>"
                ));
            }
        },
    };
    let natural = match origin {
        Origin::IngestTime | Origin::KafkaTimestamp => Some(ColumnType::Timestamp),
        Origin::KafkaTopic | Origin::KafkaKey => Some(ColumnType::String),
        Origin::KafkaPartition | Origin::KafkaOffset => Some(ColumnType::Integer),
        Origin::Payload => Some(ColumnType::Json),
        Origin::Pointer(_) | Origin::Header(_) => None,
    };
    let kind = match (c.kind, natural) {
        (Some(k), None) => k,
        (None, Some(n)) => n,
        (None, None) => {
            return Err(format!("{here}: set `type` (string, integer, decimal, boolean, timestamp or json)"));
        }
        (Some(k), Some(n)) if k == n || (n == ColumnType::Json && k == ColumnType::String) => k,
        (Some(k), Some(n)) => {
            return Err(format!(
                "{here}: computed = `{}` is {}, not {}",
                c.computed.as_deref().unwrap_or_default(),
                n.article(),
                k.article()
            ));
        }
    };
    let only = |set: bool, key: &str, for_kind: ColumnType| {
        if set && kind != for_kind {
            Err(format!("{here}: `{key}` applies to {} columns only", for_kind.as_str()))
        } else {
            Ok(())
        }
    };
    only(c.max_length.is_some(), "max_length", ColumnType::String)?;
    only(c.precision.is_some() || c.scale.is_some(), "precision/scale", ColumnType::Decimal)?;
    only(c.format.is_some(), "format", ColumnType::Timestamp)?;
    let max_length = c.max_length.unwrap_or(DEFAULT_STRING_LENGTH);
    if kind == ColumnType::String && !(1..=16_777_215).contains(&max_length) {
        return Err(format!("{here}: max_length must be between 1 and 16777215"));
    }
    let (precision, scale) = match kind {
        ColumnType::Decimal => {
            let p = c
                .precision
                .ok_or_else(|| format!("{here}: a decimal needs `precision` (total digits, 1-65)"))?;
            let s = c.scale.unwrap_or(0);
            if !(1..=65).contains(&p) || s > 30 || s > p {
                return Err(format!(
                    "{here}: precision must be 1-65 and scale 0-30 and at most the precision"
                ));
            }
            (p, s)
        }
        _ => (0, 0),
    };
    let format = match c.format.as_deref() {
        None | Some("rfc3339") => TimeFormat::Rfc3339,
        Some("unix_seconds") => TimeFormat::UnixSeconds,
        Some("unix_millis") => TimeFormat::UnixMillis,
        Some(desc) => {
            TimeFormat::Custom(Box::new(time::format_description::parse_owned::<2>(desc).map_err(|e| {
                format!("{here}: format `{desc}` is not a valid time format description: {e}")
            })?))
        }
    };
    let mut column = Column {
        name: c.name.clone(),
        origin,
        kind,
        max_length,
        precision,
        scale,
        format,
        required: c.required,
        default: None,
    };
    if let Some(d) = &c.default {
        if d.is_null() {
            return Err(format!("{here}: default = null is the same as no default"));
        }
        let text = d.to_string();
        let value = match &column.origin {
            Origin::Pointer(_) => from_json(&column, &text),
            _ => match d.as_str() {
                Some(s) => from_text(&column, s),
                None => from_json(&column, &text),
            },
        }
        .map_err(|r| format!("{here}: default {text} does not fit the column: {}", r.reason))?;
        column.default = Some(value);
    }
    Ok(column)
}

/// Splits an RFC 6901 pointer into its unescaped segments.
fn parse_pointer(p: &str) -> Result<Vec<String>, &'static str> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err("must start with `/` (for example `/status` or `/address/city`)");
    };
    let mut out = Vec::new();
    for seg in rest.split('/') {
        let mut s = String::with_capacity(seg.len());
        let mut chars = seg.chars();
        while let Some(ch) = chars.next() {
            if ch == '~' {
                match chars.next() {
                    Some('0') => s.push('~'),
                    Some('1') => s.push('/'),
                    _ => return Err("has a `~` not followed by 0 or 1"),
                }
            } else {
                s.push(ch);
            }
        }
        out.push(s);
    }
    Ok(out)
}

fn payload_text(record: &Record, max: usize) -> Result<&str, Rejection> {
    let bytes = match &record.payload {
        None => return Err(Rejection::new("null_value", "message value is null (a tombstone)")),
        Some(b) if b.is_empty() => return Err(Rejection::new("empty_value", "message value is empty")),
        Some(b) => b,
    };
    if bytes.len() > max {
        return Err(Rejection::new(
            "payload_too_large",
            format!("message value is {} bytes, the limit is {max}", bytes.len()),
        ));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        Rejection::new(
            "not_utf8",
            format!("message value is not UTF-8 (invalid byte at {})", e.valid_up_to()),
        )
    })
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, Rejection> {
    std::str::from_utf8(bytes).map_err(|_| Rejection::new("not_utf8", format!("{what} is not UTF-8")))
}

type Fields<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

/// Parses the whole payload (so invalid JSON anywhere is caught) and keeps the raw text of
/// the top-level fields in `wanted`.
fn parse_top_level<'a>(text: &'a str, wanted: &[String]) -> Result<Fields<'a>, Rejection> {
    let mut de = serde_json::Deserializer::from_str(text);
    TopLevel { wanted }.deserialize(&mut de).and_then(|f| de.end().map(|()| f)).map_err(|e| {
        if e.is_data() && e.to_string().starts_with(NOT_OBJECT) {
            Rejection::new("not_an_object", "message value is JSON but not an object")
        } else {
            Rejection::new("invalid_json", format!("message value is not valid JSON: {e}"))
        }
    })
}

struct TopLevel<'w> {
    wanted: &'w [String],
}

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = Fields<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(NOT_OBJECT)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Fields<'de> = Vec::with_capacity(self.wanted.len());
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if self.wanted.iter().any(|w| *w == key) {
                let raw: &'de RawValue = map.next_value()?;
                // A repeated field: the last one wins, as in most JSON readers.
                out.retain(|(k, _)| *k != key);
                out.push((key, raw));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }

    refuse_non_objects!();
}

/// Follows `path` from the top-level fields; `None` where a segment is absent or the value
/// there is not an object or array.
fn lookup<'a>(fields: &Fields<'a>, path: &[String]) -> Result<Option<&'a RawValue>, Rejection> {
    let Some(&(_, first)) = fields.iter().find(|(k, _)| *k == path[0]) else { return Ok(None) };
    let mut raw = first;
    for seg in &path[1..] {
        let text = raw.get();
        let next = if text.starts_with('{') {
            let map: HashMap<Cow<'a, str>, &'a RawValue> = serde_json::from_str(text).map_err(|e| {
                Rejection::new("invalid_json", format!("message value is not valid JSON: {e}"))
            })?;
            map.get(seg.as_str()).copied()
        } else if text.starts_with('[') {
            let items: Vec<&'a RawValue> = serde_json::from_str(text).map_err(|e| {
                Rejection::new("invalid_json", format!("message value is not valid JSON: {e}"))
            })?;
            seg.parse::<usize>()
                .ok()
                .filter(|_| seg == "0" || !seg.starts_with('0'))
                .and_then(|i| items.get(i).copied())
        } else {
            None
        };
        match next {
            Some(n) => raw = n,
            None => return Ok(None),
        }
    }
    Ok(Some(raw))
}

fn invalid(c: &Column, found: &str) -> Rejection {
    Rejection::new("invalid_field", format!("column `{}` takes {}, found {found}", c.name, c.kind.article()))
}

fn json_kind(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Converts a raw JSON value (not `null`) to the column's type.
fn from_json(c: &Column, raw: &str) -> Result<Value, Rejection> {
    let kind = json_kind(raw);
    let as_string =
        || -> Result<String, Rejection> { serde_json::from_str::<String>(raw).map_err(|_| invalid(c, kind)) };
    match c.kind {
        ColumnType::String => {
            if kind != "a string" {
                return Err(invalid(c, kind));
            }
            from_text(c, &as_string()?)
        }
        ColumnType::Integer => {
            if kind != "a number" {
                return Err(invalid(c, kind));
            }
            raw.parse::<i64>().map(Value::Int).map_err(|_| {
                Rejection::new(
                    "out_of_range",
                    format!("column `{}` takes a 64-bit integer, found {raw}", c.name),
                )
            })
        }
        ColumnType::Decimal => match kind {
            "a number" => decimal(c, raw),
            "a string" => decimal(c, &as_string()?),
            _ => Err(invalid(c, kind)),
        },
        ColumnType::Boolean => match raw {
            "true" => Ok(Value::Int(1)),
            "false" => Ok(Value::Int(0)),
            _ => Err(invalid(c, kind)),
        },
        ColumnType::Timestamp => match (&c.format, kind) {
            (TimeFormat::UnixSeconds | TimeFormat::UnixMillis, "a number") => from_text(c, raw),
            (TimeFormat::Rfc3339 | TimeFormat::Custom(_), "a string") => from_text(c, &as_string()?),
            _ => Err(invalid(c, kind)),
        },
        ColumnType::Json => json_text(c, raw),
    }
}

/// Converts text (a header, the key, a string default) to the column's type.
fn from_text(c: &Column, text: &str) -> Result<Value, Rejection> {
    match c.kind {
        ColumnType::String => {
            if text.len() > c.max_length && text.chars().count() > c.max_length {
                return Err(Rejection::new(
                    "field_too_long",
                    format!(
                        "column `{}` holds {} characters, the value has {}",
                        c.name,
                        c.max_length,
                        text.chars().count()
                    ),
                ));
            }
            Ok(Value::from(text))
        }
        ColumnType::Integer => {
            text.trim().parse::<i64>().map(Value::Int).map_err(|_| invalid(c, &format!("`{text}`")))
        }
        ColumnType::Decimal => decimal(c, text.trim()),
        ColumnType::Boolean => match text.trim() {
            "true" | "1" => Ok(Value::Int(1)),
            "false" | "0" => Ok(Value::Int(0)),
            _ => Err(invalid(c, &format!("`{text}`"))),
        },
        ColumnType::Timestamp => {
            let bad =
                |e: String| Rejection::new("invalid_timestamp", format!("column `{}`: `{text}` {e}", c.name));
            let t = match &c.format {
                TimeFormat::Rfc3339 => OffsetDateTime::parse(text, &Rfc3339)
                    .map_err(|e| bad(format!("is not an RFC 3339 timestamp: {e}")))?,
                TimeFormat::UnixSeconds | TimeFormat::UnixMillis => {
                    let n: i64 = text.trim().parse().map_err(|_| bad("is not a whole number".into()))?;
                    let nanos = if matches!(c.format, TimeFormat::UnixSeconds) {
                        i128::from(n) * 1_000_000_000
                    } else {
                        i128::from(n) * 1_000_000
                    };
                    OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|e| bad(e.to_string()))?
                }
                TimeFormat::Custom(f) => match OffsetDateTime::parse(text, f.as_ref()) {
                    Ok(t) => t,
                    Err(_) => PrimitiveDateTime::parse(text, f.as_ref())
                        .map_err(|e| bad(format!("does not match the column's format: {e}")))?
                        .assume_utc(),
                },
            };
            time_value(t, &c.name)
        }
        ColumnType::Json => {
            serde_json::from_str::<IgnoredAny>(text)
                .map_err(|_| invalid(c, &format!("`{text}`, not JSON")))?;
            json_text(c, text)
        }
    }
}

fn json_text(c: &Column, text: &str) -> Result<Value, Rejection> {
    if crate::mapping::exceeds_depth(text, MAX_JSON_DEPTH) {
        return Err(Rejection::new(
            "nesting_too_deep",
            format!("column `{}`: the JSON nests deeper than {MAX_JSON_DEPTH} levels", c.name),
        ));
    }
    Ok(Value::from(text))
}

fn time_value(t: OffsetDateTime, column: &str) -> Result<Value, Rejection> {
    let p = DateTimeParts::from_offset(t).ok_or_else(|| {
        Rejection::new(
            "invalid_timestamp",
            format!("column `{column}`: the time is outside the years 1000-9999 a DATETIME holds"),
        )
    })?;
    Ok(Value::Date(p.year, p.month, p.day, p.hour, p.minute, p.second, p.micros))
}

/// Checks a decimal's digits against the column and returns it as text (exact).
fn decimal(c: &Column, text: &str) -> Result<Value, Rejection> {
    let body = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !(frac.is_empty() || digits(frac)) || body.ends_with('.') {
        return Err(invalid(c, &format!("`{text}` (write decimals as digits with an optional point)")));
    }
    let int_digits = int.trim_start_matches('0').len();
    let frac = frac.trim_end_matches('0');
    let max_int = (c.precision - c.scale) as usize;
    if int_digits > max_int || frac.len() > c.scale as usize {
        return Err(Rejection::new(
            "out_of_range",
            format!(
                "column `{}` is DECIMAL({},{}): `{text}` does not fit without rounding",
                c.name, c.precision, c.scale
            ),
        ));
    }
    Ok(Value::from(text))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dp_core::Header;

    use super::*;

    fn col(name: &str, pointer: &str, kind: ColumnType) -> ColumnConfig {
        ColumnConfig {
            name: name.into(),
            pointer: Some(pointer.into()),
            computed: None,
            kind: Some(kind),
            max_length: None,
            precision: None,
            scale: None,
            format: None,
            required: false,
            default: None,
        }
    }

    fn computed(name: &str, what: &str) -> ColumnConfig {
        ColumnConfig {
            pointer: None,
            computed: Some(what.into()),
            kind: None,
            ..col(name, "/x", ColumnType::String)
        }
    }

    fn key(cols: &[&str]) -> WriteConfig {
        WriteConfig { key: cols.iter().map(|s| (*s).to_owned()).collect(), ..WriteConfig::default() }
    }

    fn status_mapping() -> ColumnMapping {
        let cols = vec![
            ColumnConfig {
                required: true,
                max_length: Some(16),
                ..col("tracking_id", "/tracking_id", ColumnType::String)
            },
            ColumnConfig { default: Some("UNKNOWN".into()), ..col("status", "/status", ColumnType::String) },
            col("event_time", "/event_time", ColumnType::Timestamp),
            ColumnConfig {
                precision: Some(8),
                scale: Some(2),
                ..col("weight_kg", "/parcel/weight", ColumnType::Decimal)
            },
            col("fragile", "/parcel/fragile", ColumnType::Boolean),
            col("attempts", "/attempts", ColumnType::Integer),
            col("first_item", "/items/0/sku", ColumnType::String),
            col("parcel", "/parcel", ColumnType::Json),
            ColumnConfig { kind: Some(ColumnType::String), ..computed("source", "header:source") },
            computed("kafka_offset", "kafka_offset"),
            computed("ingested_at", "ingest_time"),
        ];
        ColumnMapping::compile(
            "mysql",
            &cols,
            &WriteConfig {
                mode: WriteMode::Upsert,
                key: vec!["tracking_id".into()],
                guard: Some("event_time".into()),
            },
            1 << 20,
        )
        .expect("compiles")
    }

    fn rec(payload: &str) -> Record {
        Record {
            topic: Arc::from("t"),
            partition: 2,
            offset: 41,
            key: Some(b"k".to_vec()),
            headers: vec![Header { name: "source".into(), value: Some(b"scanner-7".to_vec()) }],
            timestamp_ms: Some(1_764_000_000_000),
            payload: Some(payload.as_bytes().to_vec()),
            follows: None,
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_764_000_000).expect("time")
    }

    #[test]
    fn pointers_types_headers_and_computed_columns_map() {
        let m = status_mapping();
        let p = r#"{"tracking_id":"TRK-1","event_time":"2026-11-24T10:15:30.5+01:00","parcel":{"weight":12.50,"fragile":true},"attempts":3,"items":[{"sku":"A-1"},{"sku":"B"}],"noise":[1,{"x":null}]}"#;
        let v = m.map(&rec(p), now()).expect("maps");
        assert_eq!(v[0], Value::from("TRK-1"));
        assert_eq!(v[1], Value::from("UNKNOWN"), "absent status takes the default");
        assert_eq!(v[2], Value::Date(2026, 11, 24, 9, 15, 30, 500_000));
        assert_eq!(v[3], Value::from("12.50"), "decimals keep their exact text");
        assert_eq!(v[4], Value::Int(1));
        assert_eq!(v[5], Value::Int(3));
        assert_eq!(v[6], Value::from("A-1"));
        assert_eq!(v[7], Value::from(r#"{"weight":12.50,"fragile":true}"#));
        assert_eq!(v[8], Value::from("scanner-7"));
        assert_eq!(v[9], Value::Int(41));
        assert_eq!(v[10], Value::Date(2025, 11, 24, 16, 0, 0, 0));
        assert!(m.guard_rank(&v).is_some());
    }

    #[test]
    fn absent_and_null_values_are_null_unless_required() {
        let m = status_mapping();
        let v = m.map(&rec(r#"{"tracking_id":"T","status":null,"parcel":null}"#), now()).expect("maps");
        assert_eq!(v[1], Value::from("UNKNOWN"));
        assert_eq!((&v[2], &v[3], &v[7]), (&Value::NULL, &Value::NULL, &Value::NULL));
        assert_eq!(m.guard_rank(&v), None);
        let e = m.map(&rec(r#"{"status":"X"}"#), now()).expect_err("required");
        assert_eq!(e.class, "missing_field");
        assert!(e.reason.contains("tracking_id"), "{}", e.reason);
    }

    #[test]
    fn values_that_do_not_fit_their_column_are_rejected_with_the_column_named() {
        let m = status_mapping();
        let class = |p: &str| {
            let e = m.map(&rec(p), now()).expect_err(p);
            (e.class, e.reason)
        };
        assert_eq!(class(r#"{"tracking_id":5}"#).0, "invalid_field");
        assert_eq!(class(r#"{"tracking_id":"01234567890123456"}"#).0, "field_too_long");
        assert_eq!(class(r#"{"tracking_id":"T","attempts":1.5}"#).0, "out_of_range");
        assert_eq!(class(r#"{"tracking_id":"T","attempts":"3"}"#).0, "invalid_field");
        assert_eq!(class(r#"{"tracking_id":"T","parcel":{"weight":1.234}}"#).0, "out_of_range");
        assert_eq!(class(r#"{"tracking_id":"T","parcel":{"weight":1234567}}"#).0, "out_of_range");
        assert_eq!(class(r#"{"tracking_id":"T","parcel":{"fragile":"yes"}}"#).0, "invalid_field");
        assert_eq!(class(r#"{"tracking_id":"T","event_time":"yesterday"}"#).0, "invalid_timestamp");
        assert_eq!(class(r#"[1]"#).0, "not_an_object");
        assert_eq!(class(r#"{"tracking_id":"T""#).0, "invalid_json");
        let (c, reason) = class(r#"{"tracking_id":"T","attempts":true}"#);
        assert_eq!(c, "invalid_field");
        assert_eq!(reason, "column `attempts` takes an integer, found a boolean");
    }

    #[test]
    fn timestamp_formats() {
        let mapping = |format: &str| {
            ColumnMapping::compile(
                "m",
                &[ColumnConfig {
                    format: Some(format.into()),
                    required: true,
                    ..col("t", "/t", ColumnType::Timestamp)
                }],
                &key(&["t"]),
                1 << 20,
            )
            .expect("compiles")
        };
        let at = Value::Date(2026, 11, 24, 10, 15, 30, 0);
        assert_eq!(mapping("unix_seconds").map(&rec(r#"{"t":1795515330}"#), now()).expect("s")[0], at);
        assert_eq!(mapping("unix_millis").map(&rec(r#"{"t":1795515330000}"#), now()).expect("ms")[0], at);
        let custom = mapping("[year]-[month]-[day] [hour]:[minute]:[second]");
        assert_eq!(custom.map(&rec(r#"{"t":"2026-11-24 10:15:30"}"#), now()).expect("custom")[0], at);
        assert_eq!(
            custom.map(&rec(r#"{"t":"24/11/2026"}"#), now()).expect_err("wrong shape").class,
            "invalid_timestamp"
        );
    }

    #[test]
    fn bad_mappings_are_refused_naming_the_setting() {
        let err = |cols: Vec<ColumnConfig>, write: WriteConfig| {
            ColumnMapping::compile("mysql.routes[1]", &cols, &write, 100).expect_err("refused")
        };
        let id = || ColumnConfig { required: true, ..col("id", "/id", ColumnType::String) };
        assert!(err(vec![], key(&["id"])).starts_with("mysql.routes[1].columns:"));
        assert!(
            err(vec![id(), col("id", "/x", ColumnType::String)], key(&["id"])).contains("declared twice")
        );
        assert!(err(vec![col("a-b", "/x", ColumnType::String)], key(&["a"])).contains("plain identifier"));
        assert!(
            err(vec![id(), col("x", "x", ColumnType::String)], key(&["id"])).contains("must start with `/`")
        );
        assert!(err(vec![id(), col("x", "/a~2", ColumnType::String)], key(&["id"])).contains("~"));
        let both =
            ColumnConfig { computed: Some("kafka_offset".into()), ..col("x", "/x", ColumnType::Integer) };
        assert!(err(vec![id(), both], key(&["id"])).contains("exactly one of"));
        let untyped = ColumnConfig { kind: None, ..col("x", "/x", ColumnType::String) };
        assert!(err(vec![id(), untyped], key(&["id"])).contains("set `type`"));
        assert!(err(vec![id(), computed("x", "kafka_nonsense")], key(&["id"])).contains("not one of"));
        let wrong = ColumnConfig { kind: Some(ColumnType::Boolean), ..computed("x", "kafka_offset") };
        assert!(err(vec![id(), wrong], key(&["id"])).contains("is an integer, not a boolean"));
        let dec = col("x", "/x", ColumnType::Decimal);
        assert!(err(vec![id(), dec], key(&["id"])).contains("needs `precision`"));
        let len = ColumnConfig { max_length: Some(3), ..col("x", "/x", ColumnType::Integer) };
        assert!(err(vec![id(), len], key(&["id"])).contains("`max_length` applies to string columns only"));
        let fmt = ColumnConfig { format: Some("[nonsense".into()), ..col("x", "/x", ColumnType::Timestamp) };
        assert!(err(vec![id(), fmt], key(&["id"])).contains("not a valid time format"));
        let dflt = ColumnConfig { default: Some("soon".into()), ..col("x", "/x", ColumnType::Integer) };
        assert!(err(vec![id(), dflt], key(&["id"])).contains("default \"soon\" does not fit"));
        assert!(err(vec![id()], WriteConfig::default()).starts_with("mysql.routes[1].write.key"));
        assert!(err(vec![id()], key(&["nope"])).contains("`nope` is not one of the declared columns"));
        assert!(err(vec![col("id", "/id", ColumnType::String)], key(&["id"])).contains("could be NULL"));
        let guarded = |g: &str, mode| WriteConfig { mode, key: vec!["id".into()], guard: Some(g.into()) };
        let cols = || vec![id(), col("s", "/s", ColumnType::String), col("n", "/n", ColumnType::Integer)];
        assert!(err(cols(), guarded("n", WriteMode::Insert)).contains("only applies to mode = \"upsert\""));
        assert!(err(cols(), guarded("s", WriteMode::Upsert)).contains("must be an integer or a timestamp"));
        let int_id = ColumnConfig { required: true, ..col("id", "/id", ColumnType::Integer) };
        let keyed = vec![int_id, col("s", "/s", ColumnType::String)];
        assert!(err(keyed, guarded("id", WriteMode::Upsert)).contains("is a key column"));
        assert!(
            err(vec![id()], WriteConfig { mode: WriteMode::Upsert, ..key(&["id"]) })
                .contains("nothing to update")
        );
        assert!(
            ColumnMapping::compile("m", &cols(), &guarded("n", WriteMode::Upsert), 100).is_ok(),
            "and a good one compiles"
        );
    }

    #[test]
    fn ddl_has_the_declared_types_and_the_key_as_primary_key() {
        let ddl = status_mapping().create_table("delivery_status");
        for part in [
            "CREATE TABLE IF NOT EXISTS `delivery_status` (",
            "`tracking_id` VARCHAR(16) NOT NULL",
            "`status` VARCHAR(255) NOT NULL",
            "`event_time` DATETIME(3) NULL",
            "`weight_kg` DECIMAL(8,2) NULL",
            "`fragile` BOOLEAN NULL",
            "`attempts` BIGINT NULL",
            "`parcel` JSON NULL",
            "`kafka_offset` BIGINT NOT NULL",
            "`ingested_at` DATETIME(3) NOT NULL",
            "PRIMARY KEY (`tracking_id`)",
        ] {
            assert!(ddl.contains(part), "{part} missing from\n{ddl}");
        }
    }

    #[test]
    fn guard_ranks_order_times_and_integers() {
        let m = status_mapping();
        let at = |p: &str| m.guard_rank(&m.map(&rec(p), now()).expect("maps"));
        let early = at(r#"{"tracking_id":"T","event_time":"2026-11-24T10:00:00Z"}"#);
        let late = at(r#"{"tracking_id":"T","event_time":"2026-11-24T10:00:00.001Z"}"#);
        let next_year = at(r#"{"tracking_id":"T","event_time":"2027-01-01T00:00:00Z"}"#);
        assert!(early < late && late < next_year);
    }
}
