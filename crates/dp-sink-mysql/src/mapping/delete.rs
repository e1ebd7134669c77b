//! Tombstones as deletes (`write.delete = "tombstone"`): which row a tombstone names, taken
//! from its Kafka key, and the guard value it is compared with.
//!
//! A tombstone carries no payload, so a key column read from the payload takes its value from
//! the Kafka key instead: the key's whole text when it is the only such column and the key is
//! not a JSON object, otherwise the field of the key's JSON object named like the column (as
//! Kafka Connect's `pk.mode = record_key` reads a struct key). Key columns computed from the
//! record (`kafka_key`, a header, the topic or partition) take the value they would for any
//! record.

use dp_core::Record;
use mysql_async::Value;
use time::OffsetDateTime;

use super::compile::{Column, ColumnMapping, Origin};
use super::extract::{self, Fields};
use super::settings::{ColumnType, DeleteMode, WriteConfig, WriteMode};
use super::{DateTimeParts, Rejection};
use crate::sink::date_value;
use crate::sql::Ident;

/// How a table applies tombstones, compiled from `write.delete` and `write.soft_delete_column`.
#[derive(Debug, Clone)]
pub(crate) struct Deletes {
    /// Mark the row deleted in this column instead of deleting it.
    pub soft: Option<Ident>,
    /// Where a tombstone's guard value comes from (with `write.guard`).
    pub guard: Option<DeleteGuard>,
    /// Key columns read from the payload, which a tombstone's Kafka key gives instead.
    pub from_key: Vec<String>,
}

/// Where a tombstone's guard value comes from.
#[derive(Debug, Clone)]
pub(crate) enum DeleteGuard {
    /// The guard column's own value, computed from the record (a header, a Kafka coordinate).
    Column(Origin),
    /// A timestamp read from the payload: the tombstone's Kafka timestamp stands for it.
    KafkaTimestamp,
}

/// What one record does to its table.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Write this row (insert, or upsert).
    Write(Vec<Value>),
    /// Delete (or mark deleted) the row with this key.
    Delete(Delete),
}

/// A tombstone, resolved: the row it names and the values it is applied with.
#[derive(Debug, Clone, PartialEq)]
pub struct Delete {
    /// The key columns' values, in `write.key` order.
    pub key: Vec<Value>,
    /// With a guard: the value a stored row's guard must not exceed for the delete to apply
    /// (the largest value of the column's type when the tombstone has none: it applies).
    pub guard: Option<Value>,
    /// The soft-delete time: the Kafka timestamp, or the time of mapping without one.
    pub at: Value,
}

/// The guard value of a tombstone that has none: the largest a `DATETIME` or a `BIGINT` holds,
/// so the delete applies whatever the stored row's guard.
fn unbounded(kind: ColumnType) -> Value {
    match kind {
        ColumnType::Timestamp => Value::Date(9999, 12, 31, 23, 59, 59, 999_000),
        _ => Value::Int(i64::MAX),
    }
}

/// Checks `write.delete` and `write.soft_delete_column` against the compiled columns, key
/// and guard.
pub(crate) fn compile(
    at: &str,
    write: &WriteConfig,
    columns: &[Column],
    key: &[usize],
    guard: Option<usize>,
) -> Result<Option<Deletes>, String> {
    if write.delete == DeleteMode::None {
        if write.soft_delete_column.is_some() {
            return Err(format!("{at}.write.soft_delete_column: applies only with delete = \"tombstone\""));
        }
        return Ok(None);
    }
    if write.mode != WriteMode::Upsert {
        return Err(format!(
            "{at}.write.delete: deletes apply to tables holding the latest row per key; set mode = \"upsert\" \
             (an insert-only table never changes a stored row)"
        ));
    }
    let soft = match &write.soft_delete_column {
        None => None,
        Some(name) => {
            let ident = Ident::new(name).ok_or_else(|| {
                format!(
                    "{at}.write.soft_delete_column: `{name}` is not a plain identifier (1-64 of [A-Za-z0-9_])"
                )
            })?;
            if columns.iter().any(|c| c.name.eq_ignore_ascii_case(name)) {
                return Err(format!(
                    "{at}.write.soft_delete_column: `{name}` is a declared column; name a column of its own \
                     (a nullable DATETIME(3) that `migrate` adds), which only deletes and upserts set"
                ));
            }
            Some(ident)
        }
    };
    let mut from_key = Vec::new();
    for &k in key {
        let c = &columns[k];
        match &c.origin {
            Origin::Pointer(_) => from_key.push(c.name.clone()),
            Origin::KafkaKey | Origin::Header(_) | Origin::KafkaTopic | Origin::KafkaPartition => {}
            _ => {
                return Err(format!(
                    "{at}.write.delete: key column `{}` is computed from the record's coordinates or time, \
                     so a tombstone cannot name the row it deletes",
                    c.name
                ));
            }
        }
    }
    let guard = match guard {
        None => None,
        Some(g) => {
            let c = &columns[g];
            // A pointer's fallback is not the guard's meaning (an ingest time, an offset): the
            // tombstone is compared by its Kafka timestamp, or not at all.
            Some(match &c.origin {
                Origin::Pointer(_) if c.kind == ColumnType::Timestamp => DeleteGuard::KafkaTimestamp,
                Origin::Pointer(_) => {
                    return Err(format!(
                        "{at}.write.delete: guard `{}` is an integer read from the payload, which a tombstone \
                         does not have; use a timestamp guard (a tombstone compares its Kafka timestamp) or one \
                         computed from the record",
                        c.name
                    ));
                }
                origin => DeleteGuard::Column(origin.clone()),
            })
        }
    };
    Ok(Some(Deletes { soft, guard, from_key }))
}

impl ColumnMapping {
    /// What `record` does to the table: a tombstone deletes with `write.delete = "tombstone"`;
    /// every other record is a row ([`ColumnMapping::map`]).
    pub fn map_op(&self, record: &Record, now: OffsetDateTime) -> Result<Op, Rejection> {
        match (&self.deletes, &record.payload) {
            (Some(deletes), None) => self.delete_of(deletes, record, now).map(Op::Delete),
            _ => self.map(record, now).map(Op::Write),
        }
    }

    /// The column a delete sets instead of deleting the row (`write.soft_delete_column`).
    pub fn soft_delete_column(&self) -> Option<&str> {
        self.deletes.as_ref().and_then(|d| d.soft.as_ref()).map(Ident::as_str)
    }

    fn delete_of(
        &self,
        deletes: &Deletes,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<Delete, Rejection> {
        let text = match &record.key {
            Some(k) => Some(
                std::str::from_utf8(k)
                    .map_err(|_| Rejection::new("invalid_key", "the tombstone's key is not UTF-8"))?,
            ),
            None => None,
        };
        let object: Option<Fields<'_>> = match text {
            Some(t) if t.trim_start().starts_with('{') => {
                Some(extract::parse_top_level(t, &deletes.from_key).map_err(|r| {
                    Rejection::new(
                        "invalid_key",
                        format!("the tombstone's key is not a JSON object: {}", r.reason),
                    )
                })?)
            }
            _ => None,
        };
        let no_fields = Fields::new();
        let mut key = Vec::with_capacity(self.key.len());
        for &k in &self.key {
            let c = &self.columns[k];
            let value = match &c.origin {
                Origin::Pointer(_) => match (&object, text) {
                    (Some(fields), _) => match fields.iter().find(|(name, _)| *name == c.name.as_str()) {
                        Some((_, raw)) if raw.get() != "null" => Some(extract::from_json(c, raw.get())?),
                        _ => None,
                    },
                    // A JSON string (a key serialised as JSON) is its text; anything else is
                    // the key's text as it is.
                    (None, Some(t)) if deletes.from_key.len() == 1 => match serde_json::from_str::<String>(t)
                    {
                        Ok(s) => Some(extract::from_text(c, &s)?),
                        Err(_) => Some(extract::from_text(c, t)?),
                    },
                    (None, Some(_)) => {
                        return Err(Rejection::new(
                            "invalid_key",
                            format!(
                                "the tombstone's key is not a JSON object with a field per key column ({})",
                                deletes.from_key.join(", ")
                            ),
                        ));
                    }
                    (None, None) => None,
                },
                origin => extract::value_of(c, origin, record, now, None, &no_fields)?,
            };
            let value = value.or_else(|| c.default.clone()).ok_or_else(|| {
                Rejection::new(
                    "invalid_key",
                    match text {
                        None => {
                            format!("the tombstone has no key, so it names no row (key column `{}`)", c.name)
                        }
                        Some(_) => format!("the tombstone's key gives no value for key column `{}`", c.name),
                    },
                )
            })?;
            if extract::is_blank(&value) {
                return Err(Rejection::new(
                    "invalid_key",
                    format!("the tombstone's key gives a blank value for key column `{}`", c.name),
                ));
            }
            key.push(value);
        }
        let kafka_time = record.timestamp_ms.and_then(DateTimeParts::from_unix_millis);
        let guard = match (&deletes.guard, self.guard) {
            (Some(how), Some(g)) => {
                let c = &self.columns[g];
                let found = match how {
                    DeleteGuard::KafkaTimestamp => kafka_time.map(|t| date_value(Some(t))),
                    DeleteGuard::Column(origin) => {
                        extract::value_of(c, origin, record, now, None, &no_fields)?
                    }
                };
                Some(found.unwrap_or_else(|| unbounded(c.kind)))
            }
            _ => None,
        };
        let at = date_value(kafka_time.or_else(|| DateTimeParts::from_offset(now)));
        Ok(Delete { key, guard, at })
    }
}
