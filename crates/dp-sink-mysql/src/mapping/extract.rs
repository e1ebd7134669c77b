//! From a record to the values of a row: the payload is read in one pass, keeping only the
//! top-level fields the pointers start with (as raw JSON text, without building values) and
//! checking everything else; each column's value is then converted to its type, or the record
//! is refused with a [`Rejection`] naming the column.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use dp_core::Record;
use mysql_async::Value;
use serde::Deserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::compile::{Column, ColumnMapping, Origin, TimeFormat};
use super::settings::ColumnType;
use super::{DateTimeParts, MAX_JSON_DEPTH, Rejection, exceeds_depth, kafka_uuid};

impl ColumnMapping {
    /// Turns `record` into one value per column, or says why it cannot be stored.
    pub fn map(&self, record: &Record, now: OffsetDateTime) -> Result<Vec<Value>, Rejection> {
        let needs_payload = !self.top_level.is_empty() || self.takes_payload;
        let text = if needs_payload { Some(payload_text(record, self.max_payload_bytes)?) } else { None };
        let fields = match text {
            Some(t) if !self.top_level.is_empty() => parse_top_level(t, &self.top_level)?,
            // The payload is stored whole: it must be JSON even when no pointer reads it.
            Some(t) => {
                serde_json::from_str::<IgnoredAny>(t).map_err(|e| {
                    Rejection::new("invalid_json", format!("message value is not valid JSON: {e}"))
                })?;
                Vec::new()
            }
            None => Vec::new(),
        };
        let mut values = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            let mut v = value_of(c, &c.origin, record, now, text, &fields)?;
            if v.is_none()
                && let Some(fallback) = &c.fallback
            {
                v = value_of(c, fallback, record, now, text, &fields)?;
            }
            match (v, &c.default) {
                (Some(v), _) => {
                    if c.is_key && is_blank(&v) {
                        return Err(Rejection::new(
                            "invalid_field",
                            format!("column `{}` is part of the write key, and the value is blank", c.name),
                        ));
                    }
                    values.push(v);
                }
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
}

/// A string value of only white space: as a key, it would merge unrelated records.
pub(super) fn is_blank(v: &Value) -> bool {
    matches!(v, Value::Bytes(b) if std::str::from_utf8(b).is_ok_and(|s| s.trim().is_empty()))
}

/// The value `origin` gives column `c` for `record`; `None` when it has none.
pub(super) fn value_of(
    c: &Column,
    origin: &Origin,
    record: &Record,
    now: OffsetDateTime,
    text: Option<&str>,
    fields: &Fields<'_>,
) -> Result<Option<Value>, Rejection> {
    Ok(match origin {
        Origin::Pointer(path) => match lookup(fields, path)? {
            Some(raw) if raw.get() != "null" => Some(from_json(c, raw.get())?),
            _ => None,
        },
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
        // A string column by compilation: the text moves into the parameter.
        Origin::KafkaUuid => Some(string_value(c, Cow::Owned(kafka_uuid(record).to_string()))?),
        Origin::Header(name) => {
            match record.headers.iter().rev().find(|h| &h.name == name).and_then(|h| h.value.as_deref()) {
                None => None,
                Some(v) => Some(from_text(c, utf8(v, &format!("header `{name}`"))?)?),
            }
        }
        Origin::Payload => match text {
            Some(t) if c.kind == ColumnType::Json => Some(json_text(c, t)?),
            Some(t) => Some(from_text(c, t)?),
            None => None,
        },
    })
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

pub(super) type Fields<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

/// Parses the whole payload (so invalid JSON anywhere is caught) and keeps the raw text of
/// the top-level fields in `wanted`.
pub(crate) fn parse_top_level<'a>(text: &'a str, wanted: &[String]) -> Result<Fields<'a>, Rejection> {
    let mut de = serde_json::Deserializer::from_str(text);
    TopLevel { wanted }.deserialize(&mut de).and_then(|f| de.end().map(|()| f)).map_err(|e| {
        if e.is_data() && e.to_string().starts_with(NOT_OBJECT) {
            Rejection::new("not_an_object", "message value is JSON but not an object")
        } else {
            Rejection::new("invalid_json", format!("message value is not valid JSON: {e}"))
        }
    })
}

/// The message a payload visitor refuses anything but an object with; callers recognise it.
const NOT_OBJECT: &str = "expected a JSON object";

/// The `Visitor` methods of a payload visitor that refuse every value but an object, each
/// with [`NOT_OBJECT`].
macro_rules! refuse_non_objects {
    () => {
        fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom(NOT_OBJECT))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(de::Error::custom(NOT_OBJECT))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(de::Error::custom(NOT_OBJECT))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(de::Error::custom(NOT_OBJECT))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(de::Error::custom(NOT_OBJECT))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(de::Error::custom(NOT_OBJECT))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Err(de::Error::custom(NOT_OBJECT))
        }
    };
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
        while let Some(Key(key)) = map.next_key()? {
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

/// An object's key, borrowed from the payload unless it holds escapes. (`Cow<str>`'s own
/// `Deserialize` always allocates: a `String` per key of every record.)
#[derive(PartialEq, Eq, Hash)]
struct Key<'de>(Cow<'de, str>);

impl std::borrow::Borrow<str> for Key<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Follows `path` from the top-level fields; `None` where a segment is absent or the value
/// there is not an object or array.
fn lookup<'a>(fields: &Fields<'a>, path: &[String]) -> Result<Option<&'a RawValue>, Rejection> {
    let Some(&(_, first)) = fields.iter().find(|(k, _)| *k == path[0]) else { return Ok(None) };
    let mut raw = first;
    for seg in &path[1..] {
        let text = raw.get();
        let next = if text.starts_with('{') {
            let map: HashMap<Key<'a>, &'a RawValue> = serde_json::from_str(text).map_err(|e| {
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

/// The text of a raw JSON string: borrowed when it has no escapes.
fn json_str(raw: &str) -> Option<Cow<'_, str>> {
    if raw.contains('\\') {
        serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
    } else {
        raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')).map(Cow::Borrowed)
    }
}

/// Converts a raw JSON value (not `null`) to the column's type.
pub(crate) fn from_json(c: &Column, raw: &str) -> Result<Value, Rejection> {
    let kind = json_kind(raw);
    let as_string = || json_str(raw).ok_or_else(|| invalid(c, kind));
    match c.kind {
        ColumnType::String => {
            if kind != "a string" {
                return Err(invalid(c, kind));
            }
            string_value(c, as_string()?)
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

/// A string column's value, moved into the parameter when it is owned already.
fn string_value(c: &Column, text: Cow<'_, str>) -> Result<Value, Rejection> {
    // Counting characters is only needed when the byte length could exceed the limit.
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
    Ok(Value::Bytes(match text {
        Cow::Borrowed(t) => t.as_bytes().to_vec(),
        Cow::Owned(t) => t.into_bytes(),
    }))
}

/// Converts text (a header, the key, a string default) to the column's type.
pub(crate) fn from_text(c: &Column, text: &str) -> Result<Value, Rejection> {
    match c.kind {
        ColumnType::String => string_value(c, Cow::Borrowed(text)),
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
    if exceeds_depth(text, MAX_JSON_DEPTH) {
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
