//! The versioned binary encoding of a [`Record`], as stored in the write-ahead buffer.
//!
//! Layout: one format-version byte, then the record in [postcard]'s wire format (a specified,
//! stable, compact serde format). A reader refuses a version it does not know rather than
//! guessing, so a rolling upgrade that changes the layout must bump [`FORMAT_VERSION`] and keep
//! decoding the old one.
//!
//! Version 2 is the same body compressed with zstd (feature `zstd`), for a write-ahead buffer
//! that trades a little CPU for memory.
//!
//! Version 3 is the body compressed with zstd and a [`Dictionary`] trained on earlier records.
//! Small records share most of their bytes (field names, enum values, the topic), which zstd on
//! one record alone cannot exploit: a dictionary can. The frame names the dictionary's id, and a
//! reader needs that dictionary ([`decode_record_with`]); whoever writes version 3 must keep the
//! dictionary where every reader finds it for as long as such records exist.
//!
//! [postcard]: https://postcard.jamesmunns.com/wire-format

use crate::record::Record;

/// The format version this build writes.
pub const FORMAT_VERSION: u8 = 1;

/// The format version of a record whose postcard body is zstd-compressed.
pub const FORMAT_VERSION_ZSTD: u8 = 2;

/// The format version of a record whose postcard body is zstd-compressed with a [`Dictionary`].
pub const FORMAT_VERSION_ZSTD_DICT: u8 = 3;

/// Why bytes could not be decoded into a record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input was empty: not even a version byte.
    #[error("encoded record is empty")]
    Empty,
    /// The version byte names a format this build does not read.
    #[error(
        "encoded record has format version {found}, this build reads versions {FORMAT_VERSION} to {FORMAT_VERSION_ZSTD_DICT}"
    )]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// The body is not a valid record in the stated format.
    #[error("encoded record body is invalid: {0}")]
    Body(#[from] postcard::Error),
    /// A compressed body could not be decompressed (or this build cannot decompress it).
    #[error("encoded record body cannot be decompressed: {0}")]
    Decompress(String),
    /// The body was compressed with a dictionary the reader was not given.
    #[error("encoded record needs zstd dictionary {id}, which is not available")]
    MissingDictionary {
        /// The dictionary id the frame names.
        id: u32,
    },
    /// Bytes offered as a dictionary are not a zstd dictionary with an id.
    #[error("not a zstd dictionary with an id ({0})")]
    Dictionary(String),
}

/// A zstd dictionary for format version 3: its bytes and the id its header carries (and every
/// frame compressed with it names).
#[derive(Clone, PartialEq, Eq)]
pub struct Dictionary {
    id: u32,
    bytes: std::sync::Arc<[u8]>,
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionary").field("id", &self.id).field("len", &self.bytes.len()).finish()
    }
}

impl Dictionary {
    /// The magic number a zstd dictionary starts with, little-endian.
    const MAGIC: u32 = 0xEC30_A437;

    /// A dictionary from its bytes, as [`Dictionary::as_bytes`] gave them; refused unless they
    /// carry a zstd dictionary header with a non-zero id.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, CodecError> {
        let word = |at: usize| bytes.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok());
        match (word(0).map(u32::from_le_bytes), word(4).map(u32::from_le_bytes)) {
            (Some(Self::MAGIC), Some(id)) if id != 0 => Ok(Self { id, bytes: bytes.into() }),
            (Some(Self::MAGIC), Some(_)) => Err(CodecError::Dictionary("its id is 0".into())),
            _ => Err(CodecError::Dictionary(format!(
                "{} bytes without the dictionary magic number",
                bytes.len()
            ))),
        }
    }

    /// Trains a dictionary of at most `max_size` bytes on the bodies of `records`. zstd refuses
    /// too few or too uniform samples (about a hundred distinct records are needed).
    #[cfg(feature = "zstd")]
    pub fn train(records: &[Record], max_size: usize) -> Result<Self, CodecError> {
        let samples: Vec<Vec<u8>> = records.iter().map(training_sample).collect();
        Self::train_on(&samples, max_size)
    }

    /// Trains a dictionary of at most `max_size` bytes on `samples`, each a
    /// [`training_sample`] (or the start of one).
    #[cfg(feature = "zstd")]
    pub fn train_on(samples: &[Vec<u8>], max_size: usize) -> Result<Self, CodecError> {
        let trained = zstd::dict::from_samples(samples, max_size)
            .map_err(|e| CodecError::Dictionary(format!("training failed: {e}")))?;
        Self::from_bytes(trained)
    }

    /// The id the dictionary's header carries.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The dictionary's bytes, to store them where readers find them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Encodes `record` as a fresh byte vector.
pub fn encode_record(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.approx_size());
    encode_record_into(record, &mut out);
    out
}

/// Appends the encoding of `record` to `out`.
pub fn encode_record_into(record: &Record, out: &mut Vec<u8>) {
    out.push(FORMAT_VERSION);
    // Serialising plain data into a Vec cannot fail: postcard only errors on a full fixed-size
    // buffer or on types it cannot represent, and a Record has neither.
    let taken = std::mem::take(out);
    *out = match postcard::to_extend(record, taken) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard cannot fail to encode a Record into a Vec: {e}"),
    };
}

/// What a dictionary is trained on: the record's body as versions 2 and 3 compress it.
pub fn training_sample(record: &Record) -> Vec<u8> {
    body(record)
}

/// The record in postcard's wire format, without a version byte.
fn body(record: &Record) -> Vec<u8> {
    match postcard::to_allocvec(record) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard cannot fail to encode a Record into a Vec: {e}"),
    }
}

/// `version`, then `compressed`.
#[cfg(feature = "zstd")]
fn framed(version: u8, compressed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(compressed.len() + 1);
    out.push(version);
    out.extend_from_slice(compressed);
    out
}

/// Encodes `record` with its body compressed by zstd at `level` (1 is fast and, for JSON
/// events, compresses about as well as the default 3).
#[cfg(feature = "zstd")]
pub fn encode_record_zstd(record: &Record, level: i32) -> Vec<u8> {
    let body = body(record);
    // A compression context is costly to create (tens of microseconds, more than compressing a
    // small record): each thread keeps one per level.
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let compressed = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        slot.as_mut().map(|(_, c)| c.compress(&body))
    });
    match compressed {
        Some(Ok(compressed)) => framed(FORMAT_VERSION_ZSTD, &compressed),
        // zstd fails only on an invalid level or out of memory; the plain form is always valid.
        _ => encode_record(record),
    }
}

/// Encodes `record` with its body compressed by zstd at `level` with `dictionary` (format
/// version 3). Falls back to [`encode_record_zstd`] if zstd cannot use the dictionary.
#[cfg(feature = "zstd")]
pub fn encode_record_zstd_dict(record: &Record, level: i32, dictionary: &Dictionary) -> Vec<u8> {
    let body = body(record);
    // Loading a dictionary into a context costs more than compressing a record: each thread
    // keeps one context, loaded with the dictionary and level it last used.
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<(i32, u32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let compressed = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, id, _)| (*l, *id) != (level, dictionary.id)) {
            *slot = zstd::bulk::Compressor::with_dictionary(level, &dictionary.bytes)
                .ok()
                .map(|c| (level, dictionary.id, c));
        }
        slot.as_mut().map(|(_, _, c)| c.compress(&body))
    });
    match compressed {
        Some(Ok(compressed)) => framed(FORMAT_VERSION_ZSTD_DICT, &compressed),
        _ => encode_record_zstd(record, level),
    }
}

/// Decodes bytes written by [`encode_record`] (or, with feature `zstd`, `encode_record_zstd`).
/// A record compressed with a dictionary is refused with [`CodecError::MissingDictionary`]: see
/// [`decode_record_with`].
pub fn decode_record(bytes: &[u8]) -> Result<Record, CodecError> {
    decode_record_with(bytes, &[])
}

/// Decodes bytes of any version this build reads; a version 3 record with the one of
/// `dictionaries` whose id its frame names ([`dictionary_id`]).
pub fn decode_record_with(bytes: &[u8], dictionaries: &[Dictionary]) -> Result<Record, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        FORMAT_VERSION => decode_body(body),
        FORMAT_VERSION_ZSTD => decode_body(&decompress(body, None)?),
        FORMAT_VERSION_ZSTD_DICT => {
            if cfg!(not(feature = "zstd")) {
                return decode_body(&decompress(body, None)?); // which says zstd is not built in
            }
            let id = dictionary_id(bytes)
                .ok_or_else(|| CodecError::Decompress("the frame names no dictionary".into()))?;
            let dictionary =
                dictionaries.iter().find(|d| d.id == id).ok_or(CodecError::MissingDictionary { id })?;
            decode_body(&decompress(body, Some(dictionary))?)
        }
        found => Err(CodecError::UnknownVersion { found }),
    }
}

/// The id of the dictionary a version 3 record was compressed with; `None` for other versions
/// (and for bytes that are not a zstd frame).
pub fn dictionary_id(bytes: &[u8]) -> Option<u32> {
    match bytes.split_first() {
        #[cfg(feature = "zstd")]
        Some((&FORMAT_VERSION_ZSTD_DICT, frame)) => {
            zstd::zstd_safe::get_dict_id_from_frame(frame).map(|id| id.get())
        }
        _ => None,
    }
}

#[cfg(feature = "zstd")]
fn decompress(body: &[u8], dictionary: Option<&Dictionary>) -> Result<Vec<u8>, CodecError> {
    /// No record body is larger (Kafka's own message limits are far below it).
    const MAX_BODY: u64 = 256 << 20;
    thread_local! {
        /// The context and the id of the dictionary loaded into it (0: none).
        static DECOMPRESSOR: std::cell::RefCell<Option<(u32, zstd::bulk::Decompressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let wanted = dictionary.map_or(0, |d| d.id);
    // `encode_record_zstd` writes the content size into the frame header.
    let size = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(n)) if n <= MAX_BODY => n as usize,
        Ok(Some(n)) => return Err(CodecError::Decompress(format!("content size {n} exceeds {MAX_BODY}"))),
        Ok(None) => return Err(CodecError::Decompress("frame has no content size".into())),
        Err(_) => return Err(CodecError::Decompress("not a zstd frame".into())),
    };
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(id, _)| *id != wanted) {
            let bytes = dictionary.map_or(&[][..], |d| &d.bytes);
            let context = zstd::bulk::Decompressor::with_dictionary(bytes)
                .map_err(|e| CodecError::Decompress(e.to_string()))?;
            *slot = Some((wanted, context));
        }
        match slot.as_mut() {
            Some((_, d)) => d.decompress(body, size).map_err(|e| CodecError::Decompress(e.to_string())),
            None => Err(CodecError::Decompress("no zstd context".into())),
        }
    })
}

#[cfg(not(feature = "zstd"))]
fn decompress(_body: &[u8], _dictionary: Option<&Dictionary>) -> Result<Vec<u8>, CodecError> {
    Err(CodecError::Decompress("zstd support (dp-core feature `zstd`) is not built in".into()))
}

fn decode_body(body: &[u8]) -> Result<Record, CodecError> {
    let (record, rest) = postcard::take_from_bytes::<Record>(body)?;
    if !rest.is_empty() {
        return Err(CodecError::Body(postcard::Error::DeserializeBadEncoding));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::record::Header;

    fn sample() -> Record {
        Record {
            topic: Arc::from("deliveries"),
            partition: 3,
            offset: 42,
            key: Some(b"trk-1".to_vec()),
            headers: vec![
                Header { name: "source".into(), value: Some(vec![0xff, 0xfe, 0x00]) },
                Header { name: "empty".into(), value: None },
            ],
            timestamp_ms: Some(1_764_000_000_123),
            payload: Some(br#"{"event_id":"e1"}"#.to_vec()),
            follows: None,
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let r = sample();
        let bytes = encode_record(&r);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode_record(&bytes).expect("decodes"), r);
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut bytes = encode_record(&sample());
        bytes[0] = 99;
        assert!(matches!(decode_record(&bytes), Err(CodecError::UnknownVersion { found: 99 })));
    }

    #[test]
    fn empty_and_truncated_inputs_are_errors() {
        assert!(matches!(decode_record(&[]), Err(CodecError::Empty)));
        let bytes = encode_record(&sample());
        assert!(decode_record(&bytes[..bytes.len() - 3]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode_record(&long).is_err(), "trailing bytes must not be ignored");
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_round_trip_is_smaller_for_json_and_refuses_corruption() {
        let mut r = sample();
        r.payload = Some(
            br#"{"event_id":"e1","tracking_id":"TRK1","status":"IN_TRANSIT","location":{"city":"Rotterdam","country":"NL"},"note":"left the sorting centre, left the sorting centre"}"#
                .to_vec(),
        );
        let plain = encode_record(&r);
        let packed = encode_record_zstd(&r, 1);
        assert_eq!(packed[0], FORMAT_VERSION_ZSTD);
        assert!(packed.len() < plain.len(), "{} vs {}", packed.len(), plain.len());
        assert_eq!(decode_record(&packed).expect("decodes"), r);
        let mut broken = packed.clone();
        broken.truncate(broken.len() / 2);
        assert!(matches!(decode_record(&broken), Err(CodecError::Decompress(_))));
    }

    /// Events as the pipeline sees them: a few templates, varying ids and places.
    #[cfg(feature = "zstd")]
    fn events(from: i64, n: i64) -> Vec<Record> {
        let statuses = ["PICKED_UP", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED"];
        let cities = ["Rotterdam", "Lyon", "Leipzig", "Porto", "Gdansk"];
        (from..from + n)
            .map(|i| {
                let payload = format!(
                    r#"{{"event_id":"evt-{i:012}","tracking_id":"TRK{:09}","status":"{}","location":{{"city":"{}","lat":{}.{:04}}},"occurred_at":"2026-12-07T10:{:02}:{:02}Z"}}"#,
                    i * 7919 % 1_000_000_007,
                    statuses[i as usize % 4],
                    cities[(i as usize / 3) % 5],
                    40 + i % 20,
                    i * 37 % 10_000,
                    i % 60,
                    (i * 13) % 60,
                );
                let mut r = Record::new("deliveries", (i % 8) as i32, i, Some(payload.into_bytes()));
                r.key = Some(format!("TRK{:09}", i * 7919 % 1_000_000_007).into_bytes());
                r.timestamp_ms = Some(1_764_000_000_000 + i);
                r
            })
            .collect()
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn a_dictionary_compresses_better_than_zstd_alone_and_is_needed_to_read() {
        let dictionary = Dictionary::train(&events(0, 2000), 4096).expect("trains");
        assert!(dictionary.as_bytes().len() <= 4096);
        let again = Dictionary::from_bytes(dictionary.as_bytes().to_vec()).expect("its own bytes");
        assert_eq!(again, dictionary);
        let other = Dictionary::train(&events(1_000_000, 2000), 2048).expect("trains");
        assert_ne!(other.id(), dictionary.id());

        let (mut with, mut without) = (0, 0);
        for r in events(5000, 200) {
            let packed = encode_record_zstd_dict(&r, 1, &dictionary);
            assert_eq!(packed[0], FORMAT_VERSION_ZSTD_DICT);
            assert_eq!(dictionary_id(&packed), Some(dictionary.id()));
            assert_eq!(
                decode_record_with(&packed, &[other.clone(), dictionary.clone()]).expect("decodes"),
                r
            );
            assert!(matches!(
                decode_record(&packed),
                Err(CodecError::MissingDictionary { id }) if id == dictionary.id()
            ));
            assert!(matches!(
                decode_record_with(&packed, std::slice::from_ref(&other)),
                Err(CodecError::MissingDictionary { .. })
            ));
            // Other versions decode whatever dictionaries are given, and name none.
            let plain = encode_record_zstd(&r, 1);
            assert_eq!(dictionary_id(&plain), None);
            assert_eq!(decode_record_with(&plain, std::slice::from_ref(&dictionary)).expect("decodes"), r);
            with += packed.len();
            without += plain.len();
        }
        // Measured: 59 bytes a record with the dictionary, 188 without (zstd alone).
        assert!(with * 2 < without, "{with} bytes with the dictionary, {without} without");
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn a_dictionary_is_refused_unless_its_header_is_one() {
        assert!(matches!(
            Dictionary::from_bytes(b"{\"not\":\"a dictionary\"}".to_vec()),
            Err(CodecError::Dictionary(_))
        ));
        let mut id_zero = Dictionary::train(&events(0, 1000), 2048).expect("trains").as_bytes().to_vec();
        id_zero[4..8].copy_from_slice(&[0; 4]);
        assert!(matches!(Dictionary::from_bytes(id_zero), Err(CodecError::Dictionary(_))));
        assert!(matches!(Dictionary::from_bytes(Vec::new()), Err(CodecError::Dictionary(_))));
        // Too few samples to learn from: a clear error, not a panic.
        assert!(matches!(Dictionary::train(&events(0, 3), 4096), Err(CodecError::Dictionary(_))));
    }

    proptest! {
        #[cfg(feature = "zstd")]
        #[test]
        fn zstd_round_trip_any_payload(payload in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..2000))) {
            let mut r = sample();
            r.payload = payload;
            prop_assert_eq!(decode_record(&encode_record_zstd(&r, 1)).expect("decodes"), r);
        }

        #[test]
        fn round_trip_any_record(
            topic in "[a-z.]{1,20}",
            partition in any::<i32>(),
            offset in any::<i64>(),
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            headers in proptest::collection::vec(
                ("\\PC{0,10}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20))),
                0..4,
            ),
            timestamp_ms in proptest::option::of(any::<i64>()),
            payload in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..600)),
        ) {
            let r = Record {
                topic: Arc::from(topic.as_str()),
                partition,
                offset,
                key,
                headers: headers.into_iter().map(|(name, value)| Header { name, value }).collect(),
                timestamp_ms,
                payload,
                follows: None,
            };
            prop_assert_eq!(decode_record(&encode_record(&r)).expect("decodes"), r);
        }
    }
}
