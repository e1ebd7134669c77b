//! Avro datums to JSON text, walking the decoded value with its writer schema.
//!
//! apache-avro's own JSON conversion writes decimals and bytes as arrays of numbers (losing the
//! decimal's scale) and timestamps as bare numbers, so the conversion is ours: it streams
//! straight into the JSON text the column mapping reads, with no intermediate tree.
//!
//! | Avro | JSON |
//! | --- | --- |
//! | null, boolean, int, long, string | as is |
//! | float, double | a number (a float with its shortest 32-bit digits: `0.1`); NaN and the infinities as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` |
//! | bytes, fixed | standard base64 |
//! | enum | its symbol |
//! | union | the branch's value, unwrapped (`/field` pointers reach it directly) |
//! | array, map, record | array, object, object |
//! | decimal, big-decimal | a string with every digit, never an exponent: `"-12.30"` |
//! | date | `"2024-05-01"` |
//! | time-millis, time-micros | the number, as written |
//! | timestamp-millis, -micros, -nanos | RFC 3339 in UTC: `"2024-05-01T12:00:00.123Z"` |
//! | local-timestamp-* | the same, its wall-clock reading taken as UTC (no zone is known) |
//! | uuid | hyphenated |
//! | duration | `{"months": m, "days": d, "millis": ms}` |

use std::fmt::Write as _;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{NamesRef, NamespaceRef, ResolvedSchema};
use apache_avro::types::Value;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A parsed Avro writer schema, its references inlined.
#[derive(Debug)]
pub struct AvroSchema {
    schema: Schema,
}

impl AvroSchema {
    /// Parses `root`, with the schemas it references (`references`, each a named type) inlined.
    pub fn parse(root: &str, references: &[String]) -> Result<Self, String> {
        let schema = if references.is_empty() {
            Schema::parse_str(root).map_err(|e| format!("the Avro schema does not parse: {e}"))?
        } else {
            let (mut schema, refs) = Schema::parse_str_with_list(root, references)
                .map_err(|e| format!("the Avro schema or one it references does not parse: {e}"))?;
            schema
                .denormalize(&refs)
                .map_err(|e| format!("the Avro schema's references do not resolve: {e}"))?;
            schema
        };
        // Resolving once here reports a dangling name now, not on every message.
        let resolved =
            ResolvedSchema::new(&schema).map_err(|e| format!("the Avro schema does not resolve: {e}"))?;
        // apache-avro decodes with no depth limit: a recursive type lets a small message nest
        // deep enough to overflow the stack, and a crash on a record would repeat on every
        // restart.
        if let Some(name) = recursive(&schema, None, resolved.get_names(), &mut Vec::new()) {
            return Err(format!(
                "the Avro schema is recursive (`{name}` contains itself), which this version does not decode"
            ));
        }
        Ok(Self { schema })
    }

    /// The datum `body` as JSON text.
    pub fn to_json(&self, body: &[u8]) -> Result<String, String> {
        // The Confluent serializers write a top-level `bytes` value raw, without its length.
        if matches!(self.schema, Schema::Bytes) {
            return serde_json::to_string(&BASE64.encode(body)).map_err(|e| e.to_string());
        }
        let resolved = ResolvedSchema::new(&self.schema).map_err(|e| e.to_string())?;
        let reader = GenericDatumReader::builder(&self.schema)
            .resolved_writer_schemata(resolved.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let mut rest = Strict(body);
        let value =
            reader.read_value(&mut rest).map_err(|e| format!("not an Avro datum of its schema: {e}"))?;
        if !rest.0.is_empty() {
            return Err(format!("{} bytes follow the Avro datum", rest.0.len()));
        }
        let json = AvroJson { value: &value, schema: &self.schema, names: resolved.get_names(), ns: None };
        serde_json::to_string(&json).map_err(|e| e.to_string())
    }
}

/// The datum's bytes, read so that running out is an error. apache-avro takes the end of its
/// input where a union's branch or a boolean should be for a null, so a value cut short
/// would otherwise decode, its last fields null.
struct Strict<'a>(&'a [u8]);

impl std::io::Read for Strict<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() && !buf.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the datum ends early"));
        }
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// The full name of a type that contains itself, if any: `stack` holds the named types being
/// walked.
fn recursive(
    schema: &Schema,
    ns: NamespaceRef<'_>,
    names: &NamesRef<'_>,
    stack: &mut Vec<String>,
) -> Option<String> {
    match schema {
        Schema::Ref { name } => {
            let full = name.fully_qualified_name(ns);
            let text = full.to_string();
            if stack.contains(&text) {
                return Some(text);
            }
            let s = names.get(&*full)?;
            stack.push(text);
            let found = recursive(s, full.namespace(), names, stack);
            stack.pop();
            found
        }
        Schema::Record(r) => {
            stack.push(r.name.fully_qualified_name(ns).to_string());
            let inner = r.name.namespace().or(ns);
            let found = r.fields.iter().find_map(|f| recursive(&f.schema, inner, names, stack));
            stack.pop();
            found
        }
        Schema::Array(a) => recursive(&a.items, ns, names, stack),
        Schema::Map(m) => recursive(&m.types, ns, names, stack),
        Schema::Union(u) => u.variants().iter().find_map(|v| recursive(v, ns, names, stack)),
        _ => None,
    }
}

/// One value with its schema, serialised as described in the module documentation.
struct AvroJson<'a> {
    value: &'a Value,
    schema: &'a Schema,
    names: &'a NamesRef<'a>,
    /// The enclosing namespace, for names the schema refers to.
    ns: NamespaceRef<'a>,
}

impl<'a> AvroJson<'a> {
    fn with(&self, value: &'a Value, schema: &'a Schema, ns: NamespaceRef<'a>) -> Self {
        Self { value, schema, names: self.names, ns }
    }
}

impl Serialize for AvroJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut schema = self.schema;
        let mut ns = self.ns;
        if let Schema::Ref { name } = schema {
            let full = name.fully_qualified_name(ns);
            let found =
                self.names.get_key_value(&*full).map(|(n, s)| (n.namespace(), *s)).ok_or_else(|| {
                    S::Error::custom(format!("the schema names `{full}` but defines no such type"))
                })?;
            (ns, schema) = found;
        }
        match (self.value, schema) {
            (Value::Union(i, inner), Schema::Union(u)) => {
                let branch = u
                    .variants()
                    .get(*i as usize)
                    .ok_or_else(|| S::Error::custom(format!("union branch {i} is not in the schema")))?;
                self.with(inner, branch, ns).serialize(s)
            }
            (Value::Record(fields), Schema::Record(r)) => {
                let inner_ns = r.name.namespace().or(ns);
                let mut map = s.serialize_map(Some(fields.len()))?;
                for ((name, v), f) in fields.iter().zip(&r.fields) {
                    map.serialize_entry(name, &self.with(v, &f.schema, inner_ns))?;
                }
                map.end()
            }
            (Value::Array(items), Schema::Array(a)) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&self.with(v, &a.items, ns))?;
                }
                seq.end()
            }
            (Value::Map(entries), Schema::Map(m)) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, &self.with(v, &m.types, ns))?;
                }
                map.end()
            }
            (Value::Decimal(d), Schema::Decimal(ds)) => {
                let unscaled = num_bigint::BigInt::from(d.clone());
                // Digits beyond the precision are refused before the (quadratic) conversion to
                // text: 10^p needs fewer than 3.33 p + 1 bits.
                if unscaled.bits() > (ds.precision as u64 * 10).div_ceil(3) + 1 {
                    return Err(S::Error::custom(format!(
                        "a decimal has more digits than its precision {}",
                        ds.precision
                    )));
                }
                s.serialize_str(&scaled(&unscaled.to_string(), ds.scale))
            }
            (value, _) => plain(value, s),
        }
    }
}

/// The largest scale a `big-decimal` may have: MySQL's `DECIMAL` holds 30 digits after the
/// point; far more is a hostile value, whose plain text would be huge.
const MAX_BIG_DECIMAL_SCALE: u64 = 1000;

/// A value whose JSON form needs no schema.
fn plain<S: Serializer>(value: &Value, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Value::Null => s.serialize_unit(),
        Value::Boolean(b) => s.serialize_bool(*b),
        Value::Date(days) => s.serialize_str(&date(*days).map_err(S::Error::custom)?),
        Value::Int(i) | Value::TimeMillis(i) => s.serialize_i32(*i),
        Value::Long(i) | Value::TimeMicros(i) => s.serialize_i64(*i),
        Value::Float(f) if f.is_finite() => s.serialize_f32(*f),
        Value::Float(f) => float(f64::from(*f), s),
        Value::Double(f) => float(*f, s),
        Value::Bytes(b) | Value::Fixed(_, b) => s.serialize_str(&BASE64.encode(b)),
        Value::String(t) | Value::Enum(_, t) => s.serialize_str(t),
        Value::Uuid(u) => s.serialize_str(&u.hyphenated().to_string()),
        Value::BigDecimal(d) => {
            // Plain digits (not `1E-7`), for a scale a column could hold.
            let (_, exponent) = d.as_bigint_and_exponent();
            if exponent.unsigned_abs() > MAX_BIG_DECIMAL_SCALE {
                return Err(S::Error::custom(format!("a big-decimal's scale {exponent} is out of range")));
            }
            s.serialize_str(&d.to_plain_string())
        }
        Value::TimestampMillis(t) => {
            s.serialize_str(&timestamp(i128::from(*t) * 1_000_000).map_err(S::Error::custom)?)
        }
        Value::TimestampMicros(t) => {
            s.serialize_str(&timestamp(i128::from(*t) * 1_000).map_err(S::Error::custom)?)
        }
        Value::TimestampNanos(t) => s.serialize_str(&timestamp(i128::from(*t)).map_err(S::Error::custom)?),
        Value::LocalTimestampMillis(t) => {
            s.serialize_str(&timestamp(i128::from(*t) * 1_000_000).map_err(S::Error::custom)?)
        }
        Value::LocalTimestampMicros(t) => {
            s.serialize_str(&timestamp(i128::from(*t) * 1_000).map_err(S::Error::custom)?)
        }
        Value::LocalTimestampNanos(t) => {
            s.serialize_str(&timestamp(i128::from(*t)).map_err(S::Error::custom)?)
        }
        Value::Duration(d) => {
            let mut map = s.serialize_map(Some(3))?;
            map.serialize_entry("months", &u32::from(d.months()))?;
            map.serialize_entry("days", &u32::from(d.days()))?;
            map.serialize_entry("millis", &u32::from(d.millis()))?;
            map.end()
        }
        Value::Union(_, _) | Value::Record(_) | Value::Array(_) | Value::Map(_) | Value::Decimal(_) => {
            Err(S::Error::custom("the decoded value does not match its schema"))
        }
    }
}

fn float<S: Serializer>(f: f64, s: S) -> Result<S::Ok, S::Error> {
    if f.is_nan() {
        s.serialize_str("NaN")
    } else if f.is_infinite() {
        s.serialize_str(if f > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        s.serialize_f64(f)
    }
}

/// `digits` (an integer's text, maybe signed) with the point `scale` digits from the right.
pub(crate) fn scaled(digits: &str, scale: usize) -> String {
    if scale == 0 {
        return digits.to_owned();
    }
    let (sign, digits) = digits.strip_prefix('-').map_or(("", digits), |d| ("-", d));
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// Days since 1970-01-01 as `YYYY-MM-DD`.
fn date(days: i32) -> Result<String, String> {
    const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;
    let d = days
        .checked_add(UNIX_EPOCH_JULIAN_DAY)
        .and_then(|j| time::Date::from_julian_day(j).ok())
        .ok_or_else(|| format!("date {days} days from 1970 is out of range"))?;
    let mut out = String::with_capacity(10);
    let _ = write!(out, "{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day());
    Ok(out)
}

/// Nanoseconds since the epoch as RFC 3339 in UTC. A local timestamp (no zone known) is
/// written the same way: its wall-clock reading, as if in UTC.
fn timestamp(nanos: i128) -> Result<String, String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|_| format!("timestamp {nanos} ns from 1970 is out of range"))?;
    t.format(&Rfc3339).map_err(|e| format!("timestamp {nanos} ns: {e}"))
}

#[cfg(test)]
mod tests {
    use apache_avro::Decimal;
    use apache_avro::types::Record;
    use apache_avro::writer::datum::GenericDatumWriter;

    use super::*;

    fn encode(schema: &Schema, value: Value) -> Vec<u8> {
        GenericDatumWriter::builder(schema)
            .build()
            .expect("writer")
            .write_value_to_vec(value)
            .expect("encodes")
    }

    const SHIPMENT: &str = r#"{
        "type": "record", "name": "Shipment", "namespace": "acme",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "weight", "type": ["null", "double"]},
            {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "SHIPPED"]}},
            {"name": "address", "type": {"type": "record", "name": "Address", "fields": [
                {"name": "city", "type": "string"}]}},
            {"name": "previous", "type": ["null", "Address"], "default": null},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "blob", "type": "bytes"}
        ]}"#;

    #[test]
    fn a_record_becomes_the_json_the_mapping_reads() {
        let avro = AvroSchema::parse(SHIPMENT, &[]).expect("parses");
        let mut r = Record::new(&avro.schema).expect("record");
        r.put("id", "T-1");
        r.put("weight", Value::Union(1, Box::new(Value::Double(2.5))));
        r.put("price", Value::Decimal(Decimal::from(vec![0xfb, 0x2e]))); // -1234
        r.put("at", Value::TimestampMillis(1_714_564_800_123));
        r.put("day", Value::Date(19_844));
        r.put("status", Value::Enum(1, "SHIPPED".into()));
        r.put("address", Value::Record(vec![("city".into(), Value::String("Lyon".into()))]));
        r.put("previous", Value::Union(1, Box::new(Value::Record(vec![("city".into(), "Oslo".into())]))));
        r.put("tags", Value::Array(vec!["a".into(), "b".into()]));
        r.put("blob", Value::Bytes(vec![0, 255]));
        let json = avro.to_json(&encode(&avro.schema, r.into())).expect("decodes");
        assert_eq!(
            json,
            r#"{"id":"T-1","weight":2.5,"price":"-12.34","at":"2024-05-01T12:00:00.123Z","day":"2024-05-01","status":"SHIPPED","address":{"city":"Lyon"},"previous":{"city":"Oslo"},"tags":["a","b"],"blob":"AP8="}"#
        );
    }

    #[test]
    fn null_branches_and_special_floats() {
        let schema = r#"{"type":"record","name":"R","fields":[
            {"name":"w","type":["null","double"]},{"name":"f","type":"float"}]}"#;
        let avro = AvroSchema::parse(schema, &[]).expect("parses");
        let value = Value::Record(vec![
            ("w".into(), Value::Union(0, Box::new(Value::Null))),
            ("f".into(), Value::Float(f32::NAN)),
        ]);
        assert_eq!(avro.to_json(&encode(&avro.schema, value)).expect("decodes"), r#"{"w":null,"f":"NaN"}"#);
    }

    #[test]
    fn bytes_that_are_not_a_datum_of_the_schema_are_refused() {
        let avro = AvroSchema::parse(SHIPMENT, &[]).expect("parses");
        let e = avro.to_json(&[0x02, b'x']).expect_err("truncated");
        assert!(e.starts_with("not an Avro datum"), "{e}");
        let s = AvroSchema::parse(r#""long""#, &[]).expect("parses");
        let e = s.to_json(&[0x02, 0x02]).expect_err("trailing");
        assert_eq!(e, "1 bytes follow the Avro datum");
    }

    #[test]
    fn references_are_inlined() {
        let address = r#"{"type":"record","name":"Address","namespace":"acme","fields":[{"name":"city","type":"string"}]}"#;
        let root = r#"{"type":"record","name":"Parcel","namespace":"acme","fields":[{"name":"to","type":"acme.Address"}]}"#;
        let avro = AvroSchema::parse(root, &[address.to_owned()]).expect("parses");
        let value = Value::Record(vec![("to".into(), Value::Record(vec![("city".into(), "Rome".into())]))]);
        assert_eq!(avro.to_json(&encode(&avro.schema, value)).expect("decodes"), r#"{"to":{"city":"Rome"}}"#);
        assert!(AvroSchema::parse(root, &[]).is_err(), "a reference that is missing");
    }

    #[test]
    fn recursive_schemas_are_refused_and_reused_types_are_not() {
        let list = r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","Node"]}]}"#;
        let e = AvroSchema::parse(list, &[]).expect_err("recursive");
        assert!(e.contains("recursive (`Node` contains itself)"), "{e}");
        AvroSchema::parse(SHIPMENT, &[]).expect("Address used twice is not recursion");
    }

    #[test]
    fn a_datum_cut_short_is_refused_even_before_trailing_unions() {
        let schema = r#"{"type":"record","name":"R","fields":[
            {"name":"id","type":"string"},{"name":"a","type":["null","string"]},{"name":"b","type":"boolean"}]}"#;
        let avro = AvroSchema::parse(schema, &[]).expect("parses");
        let value = Value::Record(vec![
            ("id".into(), "x".into()),
            ("a".into(), Value::Union(1, Box::new("y".into()))),
            ("b".into(), Value::Boolean(true)),
        ]);
        let whole = encode(&avro.schema, value);
        assert_eq!(avro.to_json(&whole).expect("whole"), r#"{"id":"x","a":"y","b":true}"#);
        for cut in [2, whole.len() - 1] {
            let e = avro.to_json(&whole[..cut]).expect_err("cut short");
            assert!(e.contains("ends early"), "cut at {cut}: {e}");
        }
    }

    #[test]
    fn floats_big_decimals_and_time_logical_types() {
        let schema = r#"{"type":"record","name":"R","fields":[
            {"name":"f","type":"float"},
            {"name":"big","type":{"type":"bytes","logicalType":"big-decimal"}},
            {"name":"us","type":{"type":"long","logicalType":"timestamp-micros"}},
            {"name":"local","type":{"type":"long","logicalType":"local-timestamp-millis"}},
            {"name":"u","type":{"type":"string","logicalType":"uuid"}},
            {"name":"small","type":{"type":"fixed","name":"D","size":4,"logicalType":"decimal","precision":4,"scale":1}}]}"#;
        let avro = AvroSchema::parse(schema, &[]).expect("parses");
        let big: bigdecimal::BigDecimal = "0.0000001".parse().expect("big decimal");
        let value = Value::Record(vec![
            ("f".into(), Value::Float(0.1)),
            ("big".into(), Value::BigDecimal(big)),
            ("us".into(), Value::TimestampMicros(1_714_564_800_123_456)),
            ("local".into(), Value::LocalTimestampMillis(1_714_564_800_000)),
            ("u".into(), Value::Uuid(apache_avro::Uuid::nil())),
            ("small".into(), Value::Decimal(Decimal::from(vec![0xff, 0xff, 0xff, 0x85]))),
        ]);
        assert_eq!(
            avro.to_json(&encode(&avro.schema, value)).expect("decodes"),
            r#"{"f":0.1,"big":"0.0000001","us":"2024-05-01T12:00:00.123456Z","local":"2024-05-01T12:00:00Z","u":"00000000-0000-0000-0000-000000000000","small":"-12.3"}"#
        );
    }

    #[test]
    fn a_decimal_with_more_digits_than_its_precision_is_refused() {
        let schema = r#"{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}"#;
        let avro = AvroSchema::parse(schema, &[]).expect("parses");
        let mut body = vec![0x40]; // 32 bytes follow
        body.extend([0x7f; 32]);
        let e = avro.to_json(&body).expect_err("too many digits");
        assert!(e.contains("more digits than its precision 4"), "{e}");
    }

    #[test]
    fn decimals_keep_their_scale() {
        assert_eq!(scaled("-1234", 2), "-12.34");
        assert_eq!(scaled("5", 3), "0.005");
        assert_eq!(scaled("-5", 3), "-0.005");
        assert_eq!(scaled("120", 0), "120");
    }

    #[test]
    fn a_top_level_bytes_value_is_raw() {
        let avro = AvroSchema::parse(r#""bytes""#, &[]).expect("parses");
        assert_eq!(avro.to_json(b"hi").expect("raw"), r#""aGk=""#);
    }
}
