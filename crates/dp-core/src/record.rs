//! One Kafka message as the pipeline carries it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch now, as Kafka timestamps count them (0 before 1970, the
/// largest `i64` past its range).
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A record header: a name and an optional value of arbitrary bytes.
///
/// Kafka header values are bytes, not text, so they are kept as bytes; a value that is not
/// UTF-8 survives the trip through the buffer unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Header name.
    pub name: String,
    /// Header value; `None` for a header sent with a null value.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

/// Where a record came from: enough to find it again in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Coordinates {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
    /// Offset of the record within its partition.
    pub offset: i64,
}

/// One message from the source, with everything needed to store it or dead-letter it later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Topic name, shared between the records of one topic.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Message key, if any.
    #[serde(with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
    /// Message headers, in the order they were sent.
    pub headers: Vec<Header>,
    /// Kafka timestamp in milliseconds since the Unix epoch, if the message carried one.
    pub timestamp_ms: Option<i64>,
    /// Message value; `None` for a tombstone.
    #[serde(with = "serde_bytes")]
    pub payload: Option<Vec<u8>>,
    /// The offset of the record the source handed out just before this one in the same
    /// partition and the same uninterrupted read (no rebalance or seek in between), when the
    /// source knows it. The offsets strictly between the two held nothing to deliver
    /// (transaction markers, aborted or compacted records), so a sink that records exactly
    /// which offsets it stored may count them as stored with this record. Not written to the
    /// write-ahead buffer: a restored record has `None`.
    #[serde(skip)]
    pub follows: Option<i64>,
}

impl Record {
    /// Whether `other` is of the same topic and partition: runs of one partition, for
    /// `slice::chunk_by`, let per-partition work be done once per run instead of per record.
    pub fn same_partition(&self, other: &Record) -> bool {
        self.partition == other.partition && self.topic == other.topic
    }

    /// A record with the given coordinates and value, and no key, headers or timestamp.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32, offset: i64, payload: Option<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            headers: Vec::new(),
            timestamp_ms: None,
            payload,
            follows: None,
        }
    }

    /// The record's coordinates.
    pub fn coordinates(&self) -> Coordinates {
        Coordinates { topic: Arc::clone(&self.topic), partition: self.partition, offset: self.offset }
    }

    /// Bytes this record occupies in memory, roughly: payload, key, headers and a fixed part.
    pub fn approx_size(&self) -> usize {
        let headers: usize =
            self.headers.iter().map(|h| h.name.len() + h.value.as_ref().map_or(0, Vec::len) + 48).sum();
        std::mem::size_of::<Self>()
            + self.payload.as_ref().map_or(0, Vec::len)
            + self.key.as_ref().map_or(0, Vec::len)
            + headers
    }
}
