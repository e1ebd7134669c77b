//! Confluent Schema Registry formats: Avro, Protobuf and JSON Schema values and keys, decoded
//! into the JSON text delivery-pipeline's column mappings read.
//!
//! A value written by a Confluent serializer (Kafka Connect's converters, the Java, Go, .NET
//! and Python clients) starts with a magic byte 0 and the 4-byte big-endian id of its schema in
//! the registry; a Protobuf value then names its message by a list of indexes. [`Decoder`]
//! fetches each schema once over the registry's REST API ([`RegistryClient`], with basic or
//! bearer authentication and TLS), compiles it, and turns values into JSON:
//!
//! - [`avro`]: the datum walked with its schema — decimals as exact strings, timestamps as
//!   RFC 3339, unions unwrapped;
//! - [`protobuf`]: the message decoded with the compiled `.proto` (imports included) and
//!   written in proto3's JSON mapping with the `.proto` field names;
//! - JSON Schema: the JSON text after the framing, unchanged.
//!
//! A registry that cannot answer is an outage ([`RegistryError::Unavailable`], retried); bytes
//! that do not decode are the record's fault ([`DecodeError::Undecodable`], dead-lettered).

pub mod avro;
pub mod config;
pub mod decoder;
pub mod protobuf;
pub mod registry;

pub use config::{Format, SchemaRegistryConfig};
pub use decoder::{DecodeError, Decoder, schema_id};
pub use registry::{RegistryClient, RegistryError};
