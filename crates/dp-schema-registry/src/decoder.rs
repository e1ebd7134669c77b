//! [`Decoder`]: Confluent-framed bytes to JSON text, with the schemas fetched once per id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::avro::AvroSchema;
use crate::config::{Format, SchemaRegistryConfig};
use crate::protobuf::{ProtoSchema, message_indexes};
use crate::registry::{RegistryClient, RegistryError};

/// The most one Avro string, bytes or array may allocate: more than any Kafka message holds.
const MAX_AVRO_ALLOCATION: usize = 64 << 20;

/// The most ids remembered as missing or unusable at once.
const MAX_UNUSABLE: usize = 1024;

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not what their format and schema say (or the schema is missing or
    /// broken): the record is dead-lettered (class `undecodable`).
    #[error("{0}")]
    Undecodable(String),
    /// The schema was not fetched: [`Decoder::prepare`] was not called on these bytes.
    #[error("schema {0} was not fetched before decoding")]
    NotFetched(u32),
}

/// A schema as fetched and compiled, or why it cannot be used.
#[derive(Debug)]
enum Compiled {
    Avro(AvroSchema),
    Protobuf(ProtoSchema),
    JsonSchema,
    /// Not in the registry, of a type this decoder does not read, or not compiling.
    Unusable(String),
}

/// Decodes Confluent-framed Avro, Protobuf and JSON Schema values and keys into JSON text.
///
/// Schema ids are immutable in a registry, so each one is fetched once, compiled, and kept for
/// the life of the decoder; one the registry does not know is remembered as such too.
/// [`prepare`](Self::prepare) fetches (asynchronously) the schemas a batch names, and fails
/// only when the registry cannot answer; [`decode`](Self::decode) is then synchronous.
#[derive(Debug)]
pub struct Decoder {
    registry: RegistryClient,
    schemas: Mutex<HashMap<u32, Arc<Compiled>>>,
}

/// The schema id of Confluent-framed `bytes`: magic byte 0 and a 4-byte big-endian id.
pub fn schema_id(bytes: &[u8]) -> Result<u32, DecodeError> {
    match bytes {
        [0, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        [] => Err(DecodeError::Undecodable("empty: no Schema Registry framing".to_owned())),
        [0, ..] => Err(DecodeError::Undecodable(format!(
            "{} bytes: too short for the Schema Registry framing (magic byte and 4-byte schema id)",
            bytes.len()
        ))),
        [magic, ..] => Err(DecodeError::Undecodable(format!(
            "magic byte {magic}, not 0: not framed by a Schema Registry serializer (or a framing this version does not read)"
        ))),
    }
}

impl Decoder {
    /// A decoder reading schemas from the configured registry.
    pub fn new(config: &SchemaRegistryConfig) -> Result<Self, String> {
        // A datum's length prefixes are read before its bytes: cap what one may allocate
        // (process-wide, set once) far below apache-avro's 512 MiB default.
        apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION);
        Ok(Self { registry: RegistryClient::new(config)?, schemas: Mutex::new(HashMap::new()) })
    }

    /// Fetches the schemas `values` name that are not known yet. Bytes without a valid framing
    /// are skipped: [`decode`](Self::decode) refuses them. Fails, having fetched what it could,
    /// when the registry cannot answer: retry later, never dead-letter for that.
    pub async fn prepare(&self, values: &[&[u8]]) -> Result<(), RegistryError> {
        let mut wanted: Vec<u32> = values.iter().filter_map(|v| schema_id(v).ok()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        wanted.retain(|id| !self.lock().contains_key(id));
        for id in wanted {
            let compiled = match self.registry.schema(id).await {
                Ok(found) => {
                    let compiled = compile(&found.root.schema_type, &found.root.schema, &found.references);
                    if let Compiled::Unusable(why) = &compiled {
                        fetched("unusable");
                        tracing::warn!(schema_id = id, "schema {id} is unusable: {why}");
                    } else {
                        fetched("ok");
                        tracing::info!(schema_id = id, schema_type = %found.root.schema_type, "fetched schema {id}");
                    }
                    compiled
                }
                Err(RegistryError::NotFound(why)) => {
                    fetched("not_found");
                    tracing::warn!(schema_id = id, "schema {id} is not in the registry: {why}");
                    Compiled::Unusable(format!("schema {id} is not in the registry ({why})"))
                }
                Err(unavailable) => {
                    fetched("unavailable");
                    return Err(unavailable);
                }
            };
            let mut schemas = self.lock();
            if matches!(compiled, Compiled::Unusable(_)) {
                // Ids no registry holds can be anything a hostile producer writes: keep a
                // bounded number of them (forgotten ones are asked for again).
                let unusable = schemas.values().filter(|c| matches!(***c, Compiled::Unusable(_))).count();
                if unusable >= MAX_UNUSABLE {
                    schemas.retain(|_, c| !matches!(**c, Compiled::Unusable(_)));
                }
            }
            schemas.insert(id, Arc::new(compiled));
        }
        Ok(())
    }

    /// `bytes` of format `format` as JSON text. For [`Format::Json`] the bytes are returned
    /// as they are (when UTF-8).
    pub fn decode(&self, format: Format, bytes: &[u8]) -> Result<String, DecodeError> {
        if format == Format::Json {
            return String::from_utf8(bytes.to_vec()).map_err(|e| {
                DecodeError::Undecodable(format!(
                    "not UTF-8 (invalid byte at {})",
                    e.utf8_error().valid_up_to()
                ))
            });
        }
        let id = schema_id(bytes)?;
        let compiled = self.lock().get(&id).cloned().ok_or(DecodeError::NotFetched(id))?;
        let body = &bytes[5..];
        let undecodable = |why: String| DecodeError::Undecodable(format!("schema {id}: {why}"));
        let mismatch = |found: &str| {
            undecodable(format!(
                "the registry holds a {found} schema, and the topic is read as {}",
                format.as_str()
            ))
        };
        match (format, &*compiled) {
            (_, Compiled::Unusable(why)) => Err(DecodeError::Undecodable(why.clone())),
            (Format::Avro, Compiled::Avro(schema)) => schema.to_json(body).map_err(undecodable),
            (Format::Protobuf, Compiled::Protobuf(schema)) => {
                let (indexes, body) = message_indexes(body).map_err(undecodable)?;
                schema.to_json(&indexes, body).map_err(undecodable)
            }
            (Format::JsonSchema, Compiled::JsonSchema) => {
                let text = std::str::from_utf8(body).map_err(|e| {
                    undecodable(format!("not UTF-8 (invalid byte at {})", e.valid_up_to() + 5))
                })?;
                Ok(text.to_owned())
            }
            (_, Compiled::Avro(_)) => Err(mismatch("AVRO")),
            (_, Compiled::Protobuf(_)) => Err(mismatch("PROTOBUF")),
            (_, Compiled::JsonSchema) => Err(mismatch("JSON")),
        }
    }

    /// A decoded key as the text a key column reads: a JSON string's content, or the JSON.
    pub fn key_text(json: String) -> String {
        match serde_json::from_str::<String>(&json) {
            Ok(s) if json.starts_with('"') => s,
            _ => json,
        }
    }

    /// How many schema ids are known (fetched, or known to be missing).
    pub fn known_schemas(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Compiled>>> {
        self.schemas.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts one schema fetch in `dp_schema_fetches_total{result}`.
fn fetched(result: &'static str) {
    metrics::counter!("dp_schema_fetches_total", "result" => result).increment(1);
}

fn compile(schema_type: &str, text: &str, references: &[(String, String)]) -> Compiled {
    let compiled = match schema_type {
        "AVRO" => {
            let texts: Vec<String> = references.iter().map(|(_, t)| t.clone()).collect();
            AvroSchema::parse(text, &texts).map(Compiled::Avro)
        }
        "PROTOBUF" => {
            let files: HashMap<String, String> = references.iter().cloned().collect();
            ProtoSchema::compile(text, &files).map(Compiled::Protobuf)
        }
        "JSON" => Ok(Compiled::JsonSchema),
        other => Err(format!("schema type `{other}` is not one this version reads")),
    };
    compiled.unwrap_or_else(Compiled::Unusable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_framing_is_checked() {
        assert_eq!(schema_id(&[0, 0, 0, 1, 2, 9]), Ok(258));
        assert!(matches!(schema_id(&[]), Err(DecodeError::Undecodable(m)) if m.starts_with("empty")));
        assert!(matches!(schema_id(&[0, 1]), Err(DecodeError::Undecodable(m)) if m.contains("too short")));
        assert!(
            matches!(schema_id(b"{\"a\":1}"), Err(DecodeError::Undecodable(m)) if m.starts_with("magic byte 123"))
        );
    }

    #[test]
    fn compiled_schemas_decode_only_their_own_format() {
        let d = Decoder::new(&SchemaRegistryConfig {
            url: vec!["http://127.0.0.1:9".into()],
            ..Default::default()
        })
        .expect("client");
        d.lock().insert(7, Arc::new(compile("AVRO", r#""string""#, &[])));
        d.lock().insert(8, Arc::new(compile("JSON", "{}", &[])));
        d.lock().insert(9, Arc::new(compile("AVRO", "{broken", &[])));
        assert_eq!(d.decode(Format::Avro, &[0, 0, 0, 0, 7, 6, b'a', b'b', b'c']).as_deref(), Ok(r#""abc""#));
        assert_eq!(d.decode(Format::JsonSchema, b"\0\0\0\0\x08{\"a\":1}").as_deref(), Ok(r#"{"a":1}"#));
        let e = d.decode(Format::Protobuf, &[0, 0, 0, 0, 7, 0]).expect_err("mismatch");
        assert!(e.to_string().contains("holds a AVRO schema, and the topic is read as protobuf"), "{e}");
        assert!(
            d.decode(Format::Avro, &[0, 0, 0, 0, 9, 0])
                .expect_err("broken")
                .to_string()
                .contains("does not parse")
        );
        assert_eq!(d.decode(Format::Avro, &[0, 0, 0, 0, 10, 0]), Err(DecodeError::NotFetched(10)));
        assert_eq!(Decoder::key_text(r#""K-1""#.to_owned()), "K-1");
        assert_eq!(Decoder::key_text(r#"{"a":1}"#.to_owned()), r#"{"a":1}"#);
    }
}
