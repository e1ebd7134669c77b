//! The versioned binary encoding of a [`Record`], as stored in the write-ahead buffer.
//!
//! Layout: one format-version byte, then the record in [postcard]'s wire format (a specified,
//! stable, compact serde format). A reader refuses a version it does not know rather than
//! guessing, so a rolling upgrade that changes the layout must bump [`FORMAT_VERSION`] and keep
//! decoding the old one.
//!
//! [postcard]: https://postcard.jamesmunns.com/wire-format

use crate::record::Record;

/// The format version this build writes.
pub const FORMAT_VERSION: u8 = 1;

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

/// Decodes bytes written by [`encode_record`].
pub fn decode_record(bytes: &[u8]) -> Result<Record, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { found: version });
    }
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

    proptest! {
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
            };
            prop_assert_eq!(decode_record(&encode_record(&r)).expect("decodes"), r);
        }
    }
}
