//! From a record to a row: the payload is parsed once, the mapped fields extracted and checked
//! against their columns, so that most bad records are dead-lettered without a round trip.
//!
//! The expected payload is a JSON object such as
//! `{"event_id": "…", "tracking_id": "…", "status": "IN_TRANSIT", "event_time": "2026-11-24T10:15:30.123Z"}`.
//! Every field is optional; other fields are kept in the stored payload untouched. Without an
//! `event_id` (the field name is configurable) the row's id is a UUID v5 derived from the
//! record's topic, partition and offset, so a redelivered record maps to the same id.

use std::borrow::Cow;
use std::fmt;

use dp_core::Record;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// Column widths of the table this sink creates, in characters.
pub const EVENT_ID_MAX: usize = 64;
/// Width of `tracking_id`.
pub const TRACKING_ID_MAX: usize = 64;
/// Width of `status`.
pub const STATUS_MAX: usize = 32;

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

/// The columns of one row, borrowing from the record where it can.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    /// Idempotency key.
    pub event_id: Cow<'a, str>,
    /// Shipment being tracked.
    pub tracking_id: Option<Cow<'a, str>>,
    /// Delivery status.
    pub status: Option<Cow<'a, str>>,
    /// When the event happened, per the producer.
    pub event_time: Option<DateTimeParts>,
    /// The whole payload, verbatim.
    pub payload: &'a str,
}

/// Why a record cannot become a row. `class` is stable and machine-readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `null_value`, `empty_value`, `not_utf8`, `invalid_json`, `not_an_object`,
    /// `invalid_field`, `field_too_long`, `invalid_timestamp`, `payload_too_large`,
    /// `nesting_too_deep`.
    pub class: &'static str,
    /// Human-readable detail.
    pub reason: String,
}

impl Rejection {
    pub(crate) fn new(class: &'static str, reason: impl Into<String>) -> Self {
        Self { class, reason: reason.into() }
    }
}

/// How a record's payload maps to columns.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Name of the payload field holding the idempotency key.
    pub event_id_field: String,
    /// Larger payloads are dead-lettered.
    pub max_payload_bytes: usize,
}

impl Mapping {
    /// Maps `record` to a row, or says why it cannot be stored.
    pub fn map<'a>(&self, record: &'a Record) -> Result<Row<'a>, Rejection> {
        let bytes = match &record.payload {
            None => return Err(Rejection::new("null_value", "message value is null (a tombstone)")),
            Some(b) if b.is_empty() => return Err(Rejection::new("empty_value", "message value is empty")),
            Some(b) => b,
        };
        if bytes.len() > self.max_payload_bytes {
            return Err(Rejection::new(
                "payload_too_large",
                format!("message value is {} bytes, the limit is {}", bytes.len(), self.max_payload_bytes),
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            Rejection::new(
                "not_utf8",
                format!("message value is not UTF-8 (invalid byte at {})", e.valid_up_to()),
            )
        })?;
        let fields = parse_fields(text, &self.event_id_field)?;
        if exceeds_depth(text, MAX_JSON_DEPTH) {
            return Err(Rejection::new(
                "nesting_too_deep",
                format!(
                    "message value nests arrays/objects deeper than {MAX_JSON_DEPTH} levels, the most a JSON column takes on MariaDB"
                ),
            ));
        }
        let event_id = match fields.event_id {
            Some(id) => check_len(&self.event_id_field, id, EVENT_ID_MAX)?,
            None => Cow::Owned(derived_event_id(record).to_string()),
        };
        if event_id.trim().is_empty() {
            return Err(Rejection::new("invalid_field", format!("field `{}` is empty", self.event_id_field)));
        }
        let tracking_id =
            fields.tracking_id.map(|v| check_len("tracking_id", v, TRACKING_ID_MAX)).transpose()?;
        let status = fields.status.map(|v| check_len("status", v, STATUS_MAX)).transpose()?;
        let event_time = fields.event_time.map(|v| parse_time(&v)).transpose()?;
        Ok(Row { event_id, tracking_id, status, event_time, payload: text })
    }
}

/// The deepest nesting of arrays and objects the `payload` JSON column accepts: MariaDB's
/// `JSON_VALID` refuses 32 levels (MySQL 8 takes 100). Deeper payloads are dead-lettered here
/// instead of costing a failed statement.
pub const MAX_JSON_DEPTH: usize = 31;

/// True when valid JSON `text` nests arrays/objects deeper than `limit`. A byte scan: brackets
/// inside strings are skipped, escapes included.
pub(crate) fn exceeds_depth(text: &str, limit: usize) -> bool {
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

/// The id of a record without an `event_id`: UUID v5 of `topic/partition/offset`.
pub fn derived_event_id(record: &Record) -> Uuid {
    let name = format!("{}/{}/{}", record.topic, record.partition, record.offset);
    Uuid::new_v5(&COORDINATE_NAMESPACE, name.as_bytes())
}

fn check_len<'a>(field: &str, v: Cow<'a, str>, max: usize) -> Result<Cow<'a, str>, Rejection> {
    // Counting chars is only needed when the byte length could exceed the limit.
    if v.len() > max && v.chars().count() > max {
        return Err(Rejection::new(
            "field_too_long",
            format!("field `{field}` is {} characters, the column holds {max}", v.chars().count()),
        ));
    }
    Ok(v)
}

fn parse_time(v: &str) -> Result<DateTimeParts, Rejection> {
    let t = OffsetDateTime::parse(v, &Rfc3339).map_err(|e| {
        Rejection::new("invalid_timestamp", format!("field `event_time` is not an RFC 3339 timestamp: {e}"))
    })?;
    DateTimeParts::from_utc(t).ok_or_else(|| {
        Rejection::new(
            "invalid_timestamp",
            "field `event_time` is outside the years 1000-9999 a DATETIME holds",
        )
    })
}

#[derive(Default)]
struct Fields<'a> {
    event_id: Option<Cow<'a, str>>,
    tracking_id: Option<Cow<'a, str>>,
    status: Option<Cow<'a, str>>,
    event_time: Option<Cow<'a, str>>,
}

/// Parses the whole payload once (so invalid JSON anywhere is caught), keeping only the
/// mapped fields and skipping the rest without building values for them.
fn parse_fields<'a>(text: &'a str, event_id_field: &str) -> Result<Fields<'a>, Rejection> {
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = ObjectSeed { event_id_field };
    let fields =
        seed.deserialize(&mut de).and_then(|f| de.end().map(|()| f)).map_err(|e| match e.classify() {
            serde_json::error::Category::Data if e.to_string().starts_with(NOT_OBJECT) => {
                Rejection::new("not_an_object", "message value is JSON but not an object")
            }
            serde_json::error::Category::Data => Rejection::new("invalid_field", strip_position(&e)),
            _ => Rejection::new("invalid_json", format!("message value is not valid JSON: {e}")),
        })?;
    Ok(fields)
}

/// The message a payload visitor refuses anything but an object with; callers recognise it.
pub(crate) const NOT_OBJECT: &str = "expected a JSON object";

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
pub(crate) use refuse_non_objects;
const WRONG_TYPE: &str = "must be a string";

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

struct ObjectSeed<'f> {
    event_id_field: &'f str,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Fields<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(NOT_OBJECT)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Fields::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = if key == self.event_id_field {
                &mut out.event_id
            } else {
                match &*key {
                    "tracking_id" => &mut out.tracking_id,
                    "status" => &mut out.status,
                    "event_time" => &mut out.event_time,
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                }
            };
            *slot = match map.next_value::<MaybeStr<'de>>()? {
                MaybeStr::Str(s) => Some(s),
                MaybeStr::Null => None,
                MaybeStr::Other(kind) => {
                    return Err(de::Error::custom(format!("field `{key}` {WRONG_TYPE}, found {kind}")));
                }
            };
        }
        Ok(out)
    }

    // Anything but an object is refused with the same message, recognised by the caller.
    refuse_non_objects!();
}

/// A field value: a string (borrowed when it has no escapes), null, or the name of another type.
enum MaybeStr<'a> {
    Str(Cow<'a, str>),
    Null,
    Other(&'static str),
}

impl<'de> Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeStr::Str(Cow::Owned(v)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr::Other("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr::Other("a number"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr::Other("an object"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn rec(payload: Option<&[u8]>) -> Record {
        Record {
            topic: Arc::from("t"),
            partition: 1,
            offset: 7,
            key: None,
            headers: vec![],
            timestamp_ms: None,
            payload: payload.map(<[u8]>::to_vec),
            follows: None,
        }
    }

    fn mapping() -> Mapping {
        Mapping { event_id_field: "event_id".into(), max_payload_bytes: 1 << 20 }
    }

    fn class(payload: &[u8]) -> &'static str {
        mapping().map(&rec(Some(payload))).expect_err("must be rejected").class
    }

    #[test]
    fn a_full_event_maps_to_its_columns() {
        let p = br#"{"event_id":"e-1","tracking_id":"TRK1","status":"IN_TRANSIT","event_time":"2026-11-24T10:15:30.123+01:00","extra":{"a":[1,2]}}"#;
        let r = rec(Some(p));
        let row = mapping().map(&r).expect("maps");
        assert_eq!(row.event_id, "e-1");
        assert_eq!(row.tracking_id.as_deref(), Some("TRK1"));
        assert_eq!(row.status.as_deref(), Some("IN_TRANSIT"));
        let t = row.event_time.expect("time");
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.micros),
            (2026, 11, 24, 9, 15, 30, 123_000)
        );
        assert_eq!(row.payload.as_bytes(), p);
    }

    #[test]
    fn missing_event_id_is_derived_from_coordinates_deterministically() {
        let r = rec(Some(br#"{"status":"DELIVERED"}"#));
        let a = mapping().map(&r).expect("maps").event_id.into_owned();
        let b = mapping().map(&r.clone()).expect("maps").event_id.into_owned();
        assert_eq!(a, b);
        assert_eq!(a, derived_event_id(&r).to_string());
        let mut other = r.clone();
        other.offset += 1;
        assert_ne!(a, derived_event_id(&other).to_string());
    }

    #[test]
    fn configurable_event_id_field_and_escaped_strings() {
        let m = Mapping { event_id_field: "id".into(), max_payload_bytes: 100 };
        let r = rec(Some(br#"{"id":"a\"b","status":"X\u0000Y","event_id":5}"#));
        let row = m.map(&r).expect("maps: event_id is not the id field here");
        assert_eq!(row.event_id, "a\"b");
        assert_eq!(row.status.as_deref(), Some("X\0Y"));
    }

    #[test]
    fn bad_records_are_classified() {
        assert_eq!(mapping().map(&rec(None)).expect_err("null").class, "null_value");
        assert_eq!(class(b""), "empty_value");
        assert_eq!(class(&[0xff, 0xfe, b'{']), "not_utf8");
        assert_eq!(class(b"{not json"), "invalid_json");
        assert_eq!(class(br#"{"a":1} trailing"#), "invalid_json");
        assert_eq!(class(b"[1,2]"), "not_an_object");
        assert_eq!(class(b"\"text\""), "not_an_object");
        assert_eq!(class(b"42"), "not_an_object");
        assert_eq!(class(br#"{"status":5}"#), "invalid_field");
        assert_eq!(class(br#"{"event_id":""}"#), "invalid_field");
        assert_eq!(class(br#"{"tracking_id":{"x":1}}"#), "invalid_field");
        let long = format!(r#"{{"status":"{}"}}"#, "x".repeat(STATUS_MAX + 1));
        assert_eq!(class(long.as_bytes()), "field_too_long");
        assert_eq!(class(br#"{"event_time":"yesterday"}"#), "invalid_timestamp");
        assert_eq!(class(br#"{"event_time":"99999-01-01T00:00:00Z"}"#), "invalid_timestamp");
        assert_eq!(class(br#"{"event_time":"0999-12-31T23:59:59Z"}"#), "invalid_timestamp");
        let deep = "[".repeat(10_000);
        assert_eq!(class(format!(r#"{{"x":{deep}}}"#).as_bytes()), "invalid_json");
        let nested = |n: usize| format!(r#"{{"x":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        assert_eq!(class(nested(10_000).as_bytes()), "nesting_too_deep");
        assert_eq!(class(nested(MAX_JSON_DEPTH).as_bytes()), "nesting_too_deep", "the object is a level");
        assert!(mapping().map(&rec(Some(nested(MAX_JSON_DEPTH - 1).as_bytes()))).is_ok());
        assert!(
            mapping().map(&rec(Some(br#"{"s":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"[[[["}"#))).is_ok(),
            "brackets inside strings do not count"
        );
        let m = Mapping { event_id_field: "event_id".into(), max_payload_bytes: 10 };
        assert_eq!(m.map(&rec(Some(br#"{"a":"0123456789"}"#))).expect_err("big").class, "payload_too_large");
    }

    #[test]
    fn wrong_type_reason_names_the_field() {
        let e = mapping().map(&rec(Some(br#"{"status":5}"#))).expect_err("rejected");
        assert_eq!(e.reason, "field `status` must be a string, found a number");
    }

    #[test]
    fn multibyte_characters_count_as_one() {
        let s = "🚚".repeat(STATUS_MAX);
        let p = format!(r#"{{"status":"{s}"}}"#);
        let r = rec(Some(p.as_bytes()));
        assert_eq!(mapping().map(&r).expect("32 emoji fit").status.as_deref(), Some(s.as_str()));
    }

    #[test]
    fn old_and_new_dates_within_datetime_range_are_accepted() {
        let r = rec(Some(br#"{"event_time":"1969-07-20T20:17:40Z"}"#));
        assert_eq!(
            mapping().map(&r).expect("pre-1970 is a valid date").event_time.map(|t| t.year),
            Some(1969)
        );
        assert!(DateTimeParts::from_unix_millis(1_764_000_000_000).is_some());
        assert!(DateTimeParts::from_unix_millis(i64::MAX).is_none());
    }
}
