//! The vocabulary every delivery-pipeline crate shares, and the three traits that connect them.
//!
//! A [`Record`] is one Kafka message as the pipeline sees it. A [`Source`] yields records and is
//! told, through [`Source::acknowledge`], which ones are durable so it can advance its position.
//! A [`Buffer`] keeps a write-ahead copy of every record that is held in memory, so a process
//! that dies loses nothing. A [`Sink`] writes a batch of records to the store of record.
//!
//! This crate depends on no Kafka, Redis or MySQL client: the author of a custom sink depends
//! on this crate alone.
//!
//! # What "durable" means
//! A record is *delivered* once the sink's [`Sink::write_batch`] (or [`Sink::dead_letter`]) has
//! returned `Ok` for a batch that contains it: it is then either a row in the store of record or
//! an entry in its dead-letter destination. Only delivered records are acknowledged to the
//! source, and a source advances its committed position only over a contiguous prefix of
//! delivered records per partition (see [`OffsetTracker`]).

pub mod accumulator;
pub mod codec;
pub mod error;
pub mod offsets;
pub mod record;
pub mod secret;
pub mod settings;
pub mod tls;
#[cfg(feature = "rustls")]
pub mod tls_rustls;
pub mod traits;
pub mod turn;

pub use accumulator::{Accumulator, Batch, FlushTrigger};
pub use codec::{
    CodecError, FORMAT_VERSION, FORMAT_VERSION_ZSTD, FORMAT_VERSION_ZSTD_DICT, decode_record,
    decode_record_with, dictionary_id, encode_record, encode_record_into, training_sample,
};
#[cfg(feature = "zstd")]
pub use codec::{Dictionary, encode_record_zstd, encode_record_zstd_dict};
pub use error::{BufferError, ErrorKind, SinkError, SourceError};
pub use offsets::OffsetTracker;
pub use record::{Coordinates, Header, Record, unix_millis};
pub use secret::{Secret, SecretUrl, is_secret_name, read_secret_file, redact_url};
pub use settings::string_or_list;
pub use tls::{TlsConfig, TlsFiles, TlsVerify, explain_tls_error};
#[cfg(feature = "rustls")]
pub use tls_rustls::rustls_client_config;
pub use traits::{
    BatchOutcome, Buffer, BufferKey, DeadLetter, DeadLetterPublisher, Health, Leases, Orphan, ReadBack, Sink,
    Source, Watermarks,
};
pub use turn::{Turn, TurnDone};
