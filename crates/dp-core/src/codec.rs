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
//! [postcard]: https://postcard.jamesmunns.com/wire-format

use crate::record::Record;

/// The format version this build writes.
pub const FORMAT_VERSION: u8 = 1;

/// The format version of a record whose postcard body is zstd-compressed.
pub const FORMAT_VERSION_ZSTD: u8 = 2;

/// Why bytes could not be decoded into a record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input was empty: not even a version byte.
    #[error("encoded record is empty")]
    Empty,
    /// The version byte names a format this build does not read.
    #[error("encoded record has format version {found}, this build reads version {FORMAT_VERSION}")]
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

/// Encodes `record` with its body compressed by zstd at `level` (1 is fast and, for JSON
/// events, compresses about as well as the default 3).
#[cfg(feature = "zstd")]
pub fn encode_record_zstd(record: &Record, level: i32) -> Vec<u8> {
    let body = match postcard::to_allocvec(record) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard cannot fail to encode a Record into a Vec: {e}"),
    };
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
        Some(Ok(compressed)) => {
            let mut out = Vec::with_capacity(compressed.len() + 1);
            out.push(FORMAT_VERSION_ZSTD);
            out.extend_from_slice(&compressed);
            out
        }
        // zstd fails only on an invalid level or out of memory; the plain form is always valid.
        _ => encode_record(record),
    }
}

/// Decodes bytes written by [`encode_record`] (or, with feature `zstd`, `encode_record_zstd`).
pub fn decode_record(bytes: &[u8]) -> Result<Record, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        FORMAT_VERSION => decode_body(body),
        FORMAT_VERSION_ZSTD => decode_body(&decompress(body)?),
        found => Err(CodecError::UnknownVersion { found }),
    }
}

#[cfg(feature = "zstd")]
fn decompress(body: &[u8]) -> Result<Vec<u8>, CodecError> {
    /// No record body is larger (Kafka's own message limits are far below it).
    const MAX_BODY: u64 = 256 << 20;
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    // `encode_record_zstd` writes the content size into the frame header.
    let size = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(n)) if n <= MAX_BODY => n as usize,
        Ok(Some(n)) => return Err(CodecError::Decompress(format!("content size {n} exceeds {MAX_BODY}"))),
        Ok(None) => return Err(CodecError::Decompress("frame has no content size".into())),
        Err(_) => return Err(CodecError::Decompress("not a zstd frame".into())),
    };
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| CodecError::Decompress(e.to_string()))?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress(body, size).map_err(|e| CodecError::Decompress(e.to_string())),
            None => Err(CodecError::Decompress("no zstd context".into())),
        }
    })
}

#[cfg(not(feature = "zstd"))]
fn decompress(_body: &[u8]) -> Result<Vec<u8>, CodecError> {
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
