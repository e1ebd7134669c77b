//! From a record to a row — one table model for every destination table.
//!
//! A table's columns are declared (`[[mysql.columns]]`, `[[mysql.routes.columns]]`): each takes
//! its value from a JSON pointer into the payload (`/tracking_id`, `/address/city`,
//! `/items/0/sku`) or is computed from the record (`ingest_time`, the Kafka coordinates, the
//! key, a header, the whole payload), has a type — string with a maximum length, integer,
//! decimal, boolean, timestamp with a format, JSON — and may be required or have a default.
//! The built-in delivery-event table ([`builtin`]) is a preset of such columns.
//!
//! - [`settings`]: the column and write settings as the config file spells them;
//! - [`compile`]: [`ColumnMapping::compile`] checks them once at startup, naming the key of
//!   anything wrong;
//! - [`extract`]: [`ColumnMapping::map`] turns a record into the row's values or a
//!   [`Rejection`] (the record is dead-lettered), reading the payload in one pass;
//! - [`ddl`]: `CREATE TABLE` for a mapping; [`upsert`]: which of a batch's rows sharing a key
//!   an upsert keeps.
//!
//! The live table is checked against a mapping by [`schema`](crate::schema).

pub mod builtin;
pub mod compile;
pub mod ddl;
pub mod delete;
pub mod extract;
pub mod settings;
#[cfg(test)]
mod tests;
pub mod upsert;

use dp_core::Record;
use time::OffsetDateTime;
use uuid::Uuid;

pub use builtin::builtin_columns;
pub use compile::{Column, ColumnMapping, DEFAULT_STRING_LENGTH};
pub use delete::{Delete, Op};
pub use settings::{ColumnConfig, ColumnType, DeleteMode, WriteConfig, WriteMode};
pub use upsert::Round;

/// Namespace of the UUID v5 ids derived from Kafka coordinates.
pub const COORDINATE_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_4c6e_9a43_5d0b_b7a2_0c5e_8e1f_3a90);

/// A date-time broken into the parts MySQL's `DATETIME(3)` takes, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTimeParts {
    /// Year, 1000..=9999.
    pub year: u16,
    /// Month, 1..=12.
    pub month: u8,
    /// Day of month.
    pub day: u8,
    /// Hour.
    pub hour: u8,
    /// Minute.
    pub minute: u8,
    /// Second.
    pub second: u8,
    /// Microseconds, truncated to milliseconds.
    pub micros: u32,
}

impl DateTimeParts {
    /// The UTC parts of `t`, if its year is one a `DATETIME` holds.
    pub fn from_offset(t: OffsetDateTime) -> Option<Self> {
        Self::from_utc(t)
    }

    fn from_utc(t: OffsetDateTime) -> Option<Self> {
        let t = t.to_offset(time::UtcOffset::UTC);
        let year = u16::try_from(t.year()).ok().filter(|y| (1000..=9999).contains(y))?;
        Some(Self {
            year,
            month: t.month() as u8,
            day: t.day(),
            hour: t.hour(),
            minute: t.minute(),
            second: t.second(),
            micros: t.millisecond() as u32 * 1000,
        })
    }

    /// Milliseconds since the Unix epoch, if representable.
    pub fn from_unix_millis(ms: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok().and_then(Self::from_utc)
    }
}

/// Why a record cannot become a row. `class` is stable and machine-readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `null_value`, `empty_value`, `not_utf8`, `invalid_json`, `not_an_object`,
    /// `invalid_field`, `missing_field`, `field_too_long`, `out_of_range`, `invalid_timestamp`,
    /// `payload_too_large`, `nesting_too_deep`; for a tombstone that deletes, `invalid_key`.
    pub class: &'static str,
    /// Human-readable detail.
    pub reason: String,
}

impl Rejection {
    pub(crate) fn new(class: &'static str, reason: impl Into<String>) -> Self {
        Self { class, reason: reason.into() }
    }
}

/// The deepest nesting of arrays and objects the `payload` JSON column accepts: MariaDB's
/// `JSON_VALID` refuses 32 levels (MySQL 8 takes 100). Deeper payloads are dead-lettered here
/// instead of costing a failed statement.
pub const MAX_JSON_DEPTH: usize = 31;

/// True when valid JSON `text` nests arrays/objects deeper than `limit`. A byte scan: brackets
/// inside strings are skipped, escapes included.
pub fn exceeds_depth(text: &str, limit: usize) -> bool {
    // Nesting needs an opening bracket per level: text with no more of them than `limit` (in
    // strings or not) cannot exceed it. memchr finds them with the widest SIMD the processor
    // has, so the usual payload, with a few brackets, costs a fraction of the exact scan below
    // (a plain byte count was a fifth of the built-in mapping's time, `perf`).
    if memchr::memchr2_iter(b'{', b'[', text.as_bytes()).nth(limit).is_none() {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A record's UUID v5 of `topic/partition/offset` (the computed value `kafka_uuid`): the same
/// on every redelivery of the record.
pub fn kafka_uuid(record: &Record) -> Uuid {
    let name = format!("{}/{}/{}", record.topic, record.partition, record.offset);
    Uuid::new_v5(&COORDINATE_NAMESPACE, name.as_bytes())
}
