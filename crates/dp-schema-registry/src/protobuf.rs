//! Protobuf messages to JSON text, from the registered schema compiled at run time.
//!
//! A registry returns a Protobuf schema as `.proto` text, or as a base64
//! `FileDescriptorProto` (what the Python serializer registers); both compile with protox,
//! imports included. The Confluent serializers never register their "built-in" imports
//! (`google/protobuf/*`, `google/type/*`, `confluent/*`): protox serves the first, and this
//! module bundles the others.
//!
//! The JSON is proto3's canonical mapping with the field names of the `.proto` file (not the
//! lowerCamelCase JSON names), 64-bit integers as numbers, and fields left at their default
//! written out (so a zero is a zero, not a missing column); `google.protobuf.Timestamp` is
//! RFC 3339, enums are their names, bytes are base64.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

/// The name the root schema is compiled under: unlike any import path.
const ROOT: &str = "__schema_registry_root.proto";

/// The most message indexes a framed value may carry (the Python deserializer's limit).
const MAX_INDEXES: usize = 100_000;

/// Imports the Confluent serializers never register: theirs, and Google's common types
/// (`google/type/*.proto`, Apache-2.0, from the `googleapis-common-protos` package).
const BUNDLED: &[(&str, &str)] = &[
    ("confluent/meta.proto", include_str!("proto/confluent/meta.proto")),
    ("confluent/type/decimal.proto", include_str!("proto/confluent/type/decimal.proto")),
    ("google/type/calendar_period.proto", include_str!("proto/google/type/calendar_period.proto")),
    ("google/type/color.proto", include_str!("proto/google/type/color.proto")),
    ("google/type/date.proto", include_str!("proto/google/type/date.proto")),
    ("google/type/datetime.proto", include_str!("proto/google/type/datetime.proto")),
    ("google/type/dayofweek.proto", include_str!("proto/google/type/dayofweek.proto")),
    ("google/type/decimal.proto", include_str!("proto/google/type/decimal.proto")),
    ("google/type/expr.proto", include_str!("proto/google/type/expr.proto")),
    ("google/type/fraction.proto", include_str!("proto/google/type/fraction.proto")),
    ("google/type/interval.proto", include_str!("proto/google/type/interval.proto")),
    ("google/type/latlng.proto", include_str!("proto/google/type/latlng.proto")),
    ("google/type/localized_text.proto", include_str!("proto/google/type/localized_text.proto")),
    ("google/type/money.proto", include_str!("proto/google/type/money.proto")),
    ("google/type/month.proto", include_str!("proto/google/type/month.proto")),
    ("google/type/phone_number.proto", include_str!("proto/google/type/phone_number.proto")),
    ("google/type/postal_address.proto", include_str!("proto/google/type/postal_address.proto")),
    ("google/type/quaternion.proto", include_str!("proto/google/type/quaternion.proto")),
    ("google/type/timeofday.proto", include_str!("proto/google/type/timeofday.proto")),
];

/// A compiled Protobuf schema: the root file's messages.
#[derive(Debug)]
pub struct ProtoSchema {
    pool: DescriptorPool,
}

impl ProtoSchema {
    /// Compiles `root` with `references` (import path → schema text), each `.proto` text or a
    /// base64 `FileDescriptorProto`.
    pub fn compile(root: &str, references: &HashMap<String, String>) -> Result<Self, String> {
        let mut files = HashMap::with_capacity(references.len() + 1);
        files.insert(ROOT.to_owned(), root.to_owned());
        for (name, text) in references {
            files.insert(name.clone(), text.clone());
        }
        let mut chain = ChainFileResolver::new();
        chain.add(Registered { files });
        chain.add(Bundled);
        chain.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(chain);
        compiler.open_file(ROOT).map_err(|e| format!("the Protobuf schema does not compile: {e}"))?;
        Ok(Self { pool: compiler.descriptor_pool() })
    }

    /// The message `body` of the message the framing's `indexes` name, as JSON text.
    pub fn to_json(&self, indexes: &[usize], body: &[u8]) -> Result<String, String> {
        let desc = self.message(indexes)?;
        let message = DynamicMessage::decode(desc.clone(), body)
            .map_err(|e| format!("not a `{}` message: {e}", desc.full_name()))?;
        let options = SerializeOptions::new()
            .use_proto_field_name(true)
            .stringify_64_bit_integers(false)
            .skip_default_fields(false);
        let mut out = serde_json::Serializer::new(Vec::with_capacity(body.len() * 2));
        message
            .serialize_with_options(&mut out, &options)
            .map_err(|e| format!("the `{}` message has no JSON form: {e}", desc.full_name()))?;
        String::from_utf8(out.into_inner()).map_err(|e| e.to_string())
    }

    /// The message `indexes` name: the first picks among the file's top-level messages, each
    /// further one among the nested messages of the one before.
    fn message(&self, indexes: &[usize]) -> Result<MessageDescriptor, String> {
        let file = self.pool.get_file_by_name(ROOT).ok_or("the compiled schema lost its root file")?;
        let mut path = indexes.iter();
        let first = path.next().copied().unwrap_or(0);
        let mut desc = file.messages().nth(first).ok_or_else(|| {
            format!("message index {first} is past the schema's {} messages", file.messages().len())
        })?;
        for &i in path {
            let parent = desc.full_name().to_owned();
            let child = desc.child_messages().nth(i);
            desc = child
                .ok_or_else(|| format!("message index {i} is past the nested messages of `{parent}`"))?;
        }
        Ok(desc)
    }
}

/// Reads the message indexes that follow a Protobuf value's schema id: a zigzag varint count,
/// then that many zigzag varints; a count of 0 means `[0]`. Returns them and the body.
pub fn message_indexes(bytes: &[u8]) -> Result<(Vec<usize>, &[u8]), String> {
    let (count, mut rest) = zigzag(bytes)?;
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= MAX_INDEXES)
        .ok_or_else(|| format!("the message-index count {count} is out of range"))?;
    if count == 0 {
        return Ok((vec![0], rest));
    }
    let mut indexes = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        let (i, after) = zigzag(rest)?;
        indexes.push(usize::try_from(i).map_err(|_| format!("message index {i} is negative"))?);
        rest = after;
    }
    Ok((indexes, rest))
}

fn zigzag(bytes: &[u8]) -> Result<(i64, &[u8]), String> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let signed = (value >> 1) as i64 ^ -((value & 1) as i64);
            return Ok((signed, &bytes[i + 1..]));
        }
    }
    Err(if bytes.len() >= 10 {
        "a message index is longer than a 64-bit varint".to_owned()
    } else {
        "the message indexes are cut short".to_owned()
    })
}

/// The registered schemas, by import path: `.proto` text or a base64 `FileDescriptorProto`.
struct Registered {
    files: HashMap<String, String>,
}

impl FileResolver for Registered {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        let Some(text) = self.files.get(name) else { return Err(protox::Error::file_not_found(name)) };
        if let Some(mut fdp) = descriptor(text) {
            fdp.name = Some(name.to_owned());
            return Ok(File::from_file_descriptor_proto(fdp));
        }
        File::from_source(name, text)
    }
}

/// `text` as a base64 `FileDescriptorProto`, when it is one (`.proto` text never is: it has
/// spaces).
fn descriptor(text: &str) -> Option<prost_types::FileDescriptorProto> {
    let text = text.trim();
    if text.contains(char::is_whitespace) {
        return None;
    }
    let bytes = BASE64.decode(text).ok()?;
    prost_types::FileDescriptorProto::decode(bytes.as_slice()).ok()
}

/// The Confluent imports no serializer registers.
struct Bundled;

impl FileResolver for Bundled {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match BUNDLED.iter().find(|(n, _)| *n == name) {
            Some((n, text)) => File::from_source(n, text),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::Value;

    use super::*;

    const PARCEL: &str = r#"
        syntax = "proto3";
        package acme;
        import "google/protobuf/timestamp.proto";
        import "confluent/type/decimal.proto";
        import "common/address.proto";
        message Parcel {
            string id = 1;
            int64 grams = 2;
            Status status = 3;
            google.protobuf.Timestamp at = 4;
            acme.common.Address to = 5;
            repeated string tags = 6;
            bool fragile = 7;
            confluent.type.Decimal price = 8;
            message Leg { string from = 1; string to = 2; }
            repeated Leg legs = 9;
        }
        enum Status { NEW = 0; SHIPPED = 1; }
        message Other { string x = 1; }
    "#;
    const ADDRESS: &str = r#"syntax = "proto3"; package acme.common; message Address { string city = 1; }"#;

    fn refs() -> HashMap<String, String> {
        HashMap::from([("common/address.proto".to_owned(), ADDRESS.to_owned())])
    }

    #[test]
    fn a_message_becomes_the_json_the_mapping_reads() {
        let schema = ProtoSchema::compile(PARCEL, &refs()).expect("compiles");
        let desc = schema.message(&[0]).expect("Parcel");
        let mut m = DynamicMessage::new(desc.clone());
        m.set_field_by_name("id", Value::String("P-1".into()));
        m.set_field_by_name("grams", Value::I64(9_007_199_254_740_993));
        m.set_field_by_name("status", Value::EnumNumber(1));
        let mut at =
            DynamicMessage::new(schema.pool.get_message_by_name("google.protobuf.Timestamp").expect("ts"));
        at.set_field_by_name("seconds", Value::I64(1_714_564_800));
        at.set_field_by_name("nanos", Value::I32(123_000_000));
        m.set_field_by_name("at", Value::Message(at));
        let json = schema.to_json(&[0], &m.encode_to_vec()).expect("decodes");
        assert_eq!(
            json,
            r#"{"id":"P-1","grams":9007199254740993,"status":"SHIPPED","at":"2024-05-01T12:00:00.123Z","tags":[],"fragile":false,"legs":[]}"#
        );
    }

    #[test]
    fn indexes_pick_nested_and_later_messages() {
        let schema = ProtoSchema::compile(PARCEL, &refs()).expect("compiles");
        assert_eq!(schema.message(&[0, 0]).expect("Leg").full_name(), "acme.Parcel.Leg");
        assert_eq!(schema.message(&[1]).expect("Other").full_name(), "acme.Other");
        assert!(schema.message(&[2]).is_err());
        assert!(schema.message(&[0, 1]).is_err());
    }

    #[test]
    fn a_base64_descriptor_compiles_like_its_text() {
        let text = ProtoSchema::compile(ADDRESS, &HashMap::new()).expect("compiles");
        let fdp = text.pool.get_file_by_name(ROOT).expect("root").file_descriptor_proto().clone();
        let b64 = BASE64.encode(fdp.encode_to_vec());
        let from_b64 = ProtoSchema::compile(&b64, &HashMap::new()).expect("compiles from base64");
        let desc = from_b64.message(&[0]).expect("Address");
        let mut m = DynamicMessage::new(desc);
        m.set_field_by_name("city", Value::String("Rome".into()));
        assert_eq!(from_b64.to_json(&[0], &m.encode_to_vec()).expect("decodes"), r#"{"city":"Rome"}"#);
    }

    #[test]
    fn a_missing_import_and_bad_bytes_are_errors() {
        let e = ProtoSchema::compile(PARCEL, &HashMap::new()).expect_err("no address");
        assert!(e.contains("common/address.proto"), "{e}");
        let schema = ProtoSchema::compile(PARCEL, &refs()).expect("compiles");
        assert!(
            schema
                .to_json(&[0], &[0x0a, 0x05, b'x'])
                .expect_err("truncated")
                .starts_with("not a `acme.Parcel`")
        );
    }

    #[test]
    fn google_common_types_need_no_reference() {
        let schema = r#"syntax = "proto3"; import "google/type/money.proto"; import "google/type/date.proto";
            message Price { google.type.Money amount = 1; google.type.Date day = 2; }"#;
        let s = ProtoSchema::compile(schema, &HashMap::new()).expect("bundled");
        let mut m = DynamicMessage::new(s.message(&[0]).expect("Price"));
        let mut money = DynamicMessage::new(s.pool.get_message_by_name("google.type.Money").expect("Money"));
        money.set_field_by_name("currency_code", Value::String("EUR".into()));
        money.set_field_by_name("units", Value::I64(12));
        m.set_field_by_name("amount", Value::Message(money));
        let json = s.to_json(&[0], &m.encode_to_vec()).expect("decodes");
        assert_eq!(json, r#"{"amount":{"currency_code":"EUR","units":12,"nanos":0}}"#);
    }

    #[test]
    fn message_indexes_are_zigzag() {
        assert_eq!(message_indexes(&[0x00, 0xaa]).expect("[0]"), (vec![0], &[0xaa][..]));
        assert_eq!(message_indexes(&[0x02, 0x02]).expect("[1]"), (vec![1], &[][..]));
        assert_eq!(message_indexes(&[0x04, 0x00, 0x04, 0x01]).expect("[0,2]"), (vec![0, 2], &[0x01][..]));
        assert!(message_indexes(&[0x01]).is_err(), "a count of -1");
        assert!(message_indexes(&[0x04, 0x00]).is_err(), "cut short");
        assert!(message_indexes(&[]).is_err());
    }
}
