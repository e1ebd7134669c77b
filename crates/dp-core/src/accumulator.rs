//! The in-memory side of the buffer: when a batch is ready to flush.
//!
//! A batch is due when it holds `max_rows` records, or when `flush_interval` has passed since
//! its oldest record arrived, whichever comes first. This module is pure logic with the clock
//! passed in, so the triggers are tested without waiting.

use std::time::{Duration, Instant};

use crate::record::Record;
use crate::traits::BufferKey;

/// Why a batch was flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushTrigger {
    /// The batch reached `max_rows`.
    Size,
    /// The oldest record waited `flush_interval`.
    Interval,
    /// The pipeline is shutting down.
    Shutdown,
    /// Records restored from the write-ahead buffer at startup.
    Restore,
    /// Records adopted from the buffer of an instance whose lease expired.
    Adopt,
    /// Partitions were revoked by a consumer-group rebalance.
    Rebalance,
    /// A batch held only in the write-ahead buffer while the sink was failing, read back.
    Spilled,
}

impl FlushTrigger {
    /// A short lowercase name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Size => "size",
            Self::Interval => "interval",
            Self::Shutdown => "shutdown",
            Self::Restore => "restore",
            Self::Adopt => "adopt",
            Self::Rebalance => "rebalance",
            Self::Spilled => "spilled",
        }
    }
}

/// A batch taken from the accumulator: the records and the write-ahead keys that back them.
#[derive(Debug, Default)]
pub struct Batch {
    /// Records in arrival order (offset order within each partition).
    pub records: Vec<Record>,
    /// Write-ahead keys to delete once the batch is delivered. May be shorter than `records`
    /// when some records could not be written ahead (the buffer was unreachable).
    pub keys: Vec<BufferKey>,
}

/// Collects records until a batch is due.
#[derive(Debug)]
pub struct Accumulator {
    max_rows: usize,
    flush_interval: Duration,
    batch: Batch,
    bytes: usize,
    oldest: Option<Instant>,
}

impl Accumulator {
    /// An empty accumulator. `max_rows` is at least 1.
    pub fn new(max_rows: usize, flush_interval: Duration) -> Self {
        let max_rows = max_rows.max(1);
        Self {
            max_rows,
            flush_interval,
            batch: Batch { records: Vec::with_capacity(max_rows), keys: Vec::with_capacity(max_rows) },
            bytes: 0,
            oldest: None,
        }
    }

    /// Adds records that arrived at `now`, with the write-ahead keys that back them.
    pub fn extend(&mut self, records: Vec<Record>, keys: Vec<BufferKey>, now: Instant) {
        if records.is_empty() {
            return;
        }
        self.oldest.get_or_insert(now);
        self.bytes += records.iter().map(Record::approx_size).sum::<usize>();
        self.batch.records.extend(records);
        self.batch.keys.extend(keys);
    }

    /// How many more records fit before the batch is full.
    pub fn room(&self) -> usize {
        self.max_rows.saturating_sub(self.batch.records.len())
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.batch.records.len()
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.batch.records.is_empty()
    }

    /// Write-ahead keys held (fewer than records while the buffer was unreachable).
    pub fn keys(&self) -> usize {
        self.batch.keys.len()
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the interval trigger fires, if anything is held.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.flush_interval)
    }

    /// Whether a batch is due at `now`, and why. Size wins when both hold.
    pub fn due(&self, now: Instant) -> Option<FlushTrigger> {
        if self.batch.records.len() >= self.max_rows {
            Some(FlushTrigger::Size)
        } else if self.deadline().is_some_and(|d| now >= d) {
            Some(FlushTrigger::Interval)
        } else {
            None
        }
    }

    /// Takes everything held, leaving the accumulator empty.
    pub fn take(&mut self) -> Batch {
        self.oldest = None;
        self.bytes = 0;
        std::mem::replace(
            &mut self.batch,
            Batch { records: Vec::with_capacity(self.max_rows), keys: Vec::with_capacity(self.max_rows) },
        )
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn rec(offset: i64) -> Record {
        Record::new("t", 0, offset, Some(vec![b'x'; 10]))
    }

    fn recs(range: std::ops::Range<i64>) -> Vec<Record> {
        range.map(rec).collect()
    }

    #[test]
    fn size_trigger_fires_at_max_rows() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(3, Duration::from_secs(30));
        acc.extend(recs(0..2), vec![], t0);
        assert_eq!(acc.due(t0), None);
        assert_eq!(acc.room(), 1);
        acc.extend(recs(2..3), vec![], t0);
        assert_eq!(acc.due(t0), Some(FlushTrigger::Size));
        assert_eq!(acc.room(), 0);
    }

    #[test]
    fn interval_trigger_counts_from_the_oldest_record() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(1000, Duration::from_secs(30));
        assert_eq!(acc.deadline(), None, "an empty buffer never times out");
        acc.extend(recs(0..1), vec![], t0);
        acc.extend(recs(1..2), vec![], t0 + Duration::from_secs(20));
        assert_eq!(acc.deadline(), Some(t0 + Duration::from_secs(30)));
        assert_eq!(acc.due(t0 + Duration::from_secs(29)), None);
        assert_eq!(acc.due(t0 + Duration::from_secs(30)), Some(FlushTrigger::Interval));
    }

    #[test]
    fn size_wins_over_interval_and_take_resets() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(2, Duration::from_millis(10));
        acc.extend(recs(0..2), vec![BufferKey::from("k0"), BufferKey::from("k1")], t0);
        assert_eq!(acc.due(t0 + Duration::from_secs(1)), Some(FlushTrigger::Size));
        let batch = acc.take();
        assert_eq!(batch.records.len(), 2);
        assert_eq!(batch.keys.len(), 2);
        assert!(acc.is_empty());
        assert_eq!(acc.deadline(), None);
        assert_eq!(acc.bytes(), 0);
        assert_eq!(acc.due(t0 + Duration::from_secs(1)), None);
    }

    proptest! {
        /// Fed chunks of any size, some records without a write-ahead key, at any times: the
        /// accumulator reports exactly what it holds (`len`, `room`, `keys`, `bytes`, `deadline`,
        /// `due` all follow from what was fed since the last `take`), and `take` hands every
        /// record out once, in arrival order, with its keys. Keeping a batch within `room()` is
        /// the caller's job; dp-pipeline's runtime tests check the runtime does it.
        #[test]
        fn reports_exactly_what_it_holds_and_takes_every_record_once_in_order(
            max_rows in 1usize..50,
            steps in proptest::collection::vec((0usize..120, 0usize..120, 0u64..20_000, any::<bool>()), 1..40),
        ) {
            let interval = Duration::from_secs(10);
            let mut now = Instant::now();
            let mut acc = Accumulator::new(max_rows, interval);
            let (mut next, mut out) = (0i64, Vec::new());
            // The model: what was fed since the last take, and when the first of it arrived.
            let (mut held, mut keys, mut oldest) = (Vec::<Record>::new(), Vec::<BufferKey>::new(), None);
            for (n, with_key, advance_ms, take) in steps {
                now += Duration::from_millis(advance_ms);
                let records: Vec<Record> = (next..next + n as i64)
                    .map(|o| Record::new("t", 0, o, Some(vec![b'x'; (o % 13) as usize])))
                    .collect();
                next += n as i64;
                // Records past the first `with_key` were not written ahead.
                let fed_keys: Vec<BufferKey> =
                    records.iter().take(with_key).map(|r| BufferKey(format!("k{}", r.offset))).collect();
                if !records.is_empty() {
                    oldest.get_or_insert(now);
                }
                held.extend(records.iter().cloned());
                keys.extend(fed_keys.iter().cloned());
                acc.extend(records, fed_keys, now);

                prop_assert_eq!(acc.len(), held.len());
                prop_assert_eq!(acc.is_empty(), held.is_empty());
                prop_assert_eq!(acc.room(), max_rows.saturating_sub(held.len()));
                prop_assert_eq!(acc.keys(), keys.len());
                prop_assert_eq!(acc.bytes(), held.iter().map(Record::approx_size).sum::<usize>());
                prop_assert_eq!(acc.deadline(), oldest.map(|t| t + interval));
                let due = if held.len() >= max_rows {
                    Some(FlushTrigger::Size)
                } else if oldest.is_some_and(|t| now >= t + interval) {
                    Some(FlushTrigger::Interval)
                } else {
                    None
                };
                prop_assert_eq!(acc.due(now), due);
                if take {
                    let batch = acc.take();
                    let offsets: Vec<i64> = batch.records.iter().map(|r| r.offset).collect();
                    prop_assert_eq!(&offsets, &held.iter().map(|r| r.offset).collect::<Vec<_>>());
                    prop_assert_eq!(&batch.keys, &keys);
                    out.extend(offsets);
                    (held, keys, oldest) = (Vec::new(), Vec::new(), None);
                    prop_assert!(acc.is_empty());
                    prop_assert_eq!(acc.room(), max_rows);
                    prop_assert_eq!((acc.keys(), acc.bytes(), acc.deadline(), acc.due(now)), (0, 0, None, None));
                }
            }
            out.extend(acc.take().records.iter().map(|r| r.offset));
            prop_assert_eq!(out, (0..next).collect::<Vec<_>>());
        }
    }
}
