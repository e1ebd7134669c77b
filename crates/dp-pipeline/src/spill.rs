//! Holding batches in the write-ahead buffer only while the sink is failing.
//!
//! Memory holds two batches' worth of records: the batches handed to the sink and the one
//! being collected. When
//! the sink fails transiently and memory is full, consumption would stop there. If the buffer can
//! read records back ([`Buffer::can_fetch`](dp_core::Buffer::can_fetch)), the full batch is
//! *spilled* instead: its records leave memory, their write-ahead copies stay in Redis, and only
//! their keys are kept, in arrival order. Collection goes on. Once the sink answers again the
//! spilled batches are read back and written before anything collected after them, so the
//! records of each partition reach the sink in offset order (the watermark relies on it).
//!
//! At `buffer.max_buffered_rows` (memory and spilled records together) or
//! `buffer.max_buffered_bytes`, nothing more is spilled: memory fills up, the runtime stops
//! polling and the Kafka source pauses its partitions. Memory is therefore bounded however long
//! the outage lasts: two batches of records (three while a collected batch fills to be
//! spilled: [`Spill::would_take`]), plus one key per spilled record.
//!
//! Spilled records are acknowledged only once the sink has them (under `after_sink`), so Kafka
//! still has them too; a crash leaves them to the restore of the next start.

use std::collections::VecDeque;

use dp_core::{Accumulator, BufferKey};

use crate::options::BatchingConfig;

/// A batch held in the buffer only: the keys of its records, in arrival order.
#[derive(Debug)]
pub(crate) struct Spilled {
    /// Write-ahead keys, one per record.
    pub keys: Vec<BufferKey>,
    /// Approximate payload bytes.
    pub bytes: usize,
}

/// The spilled batches, oldest first, and the limits on them.
#[derive(Debug)]
pub(crate) struct Spill {
    enabled: bool,
    batch_rows: usize,
    max_rows: usize,
    max_bytes: u64,
    queue: VecDeque<Spilled>,
    rows: usize,
    bytes: usize,
    at_limit: bool,
}

impl Spill {
    /// No spilling at all when the buffer cannot read records back.
    pub(crate) fn new(config: &BatchingConfig, can_fetch: bool) -> Self {
        Self {
            enabled: can_fetch && config.max_buffered_rows() > 2 * config.max_rows,
            batch_rows: config.max_rows,
            max_rows: config.max_buffered_rows(),
            max_bytes: config.max_buffered_bytes.as_u64(),
            queue: VecDeque::new(),
            rows: 0,
            bytes: 0,
            at_limit: false,
        }
    }

    /// Spills the collected batch if the sink is failing, the batch is full, every record of it
    /// is written ahead, and the limits leave room for it plus a new batch in memory. `held` is
    /// what the batch being written holds (records, bytes). True when it spilled.
    pub(crate) fn offer(&mut self, acc: &mut Accumulator, held: (usize, usize), sink_failing: bool) -> bool {
        if !self.enabled || !sink_failing || acc.is_empty() || acc.room() > 0 || acc.keys() < acc.len() {
            return false;
        }
        if !self.fits(acc.len(), acc.bytes(), held) {
            return false;
        }
        if self.queue.is_empty() {
            tracing::warn!(
                "sink failing: holding full batches in Redis only until it recovers (spilling); nothing is committed past them"
            );
        }
        let bytes = acc.bytes();
        let batch = acc.take();
        self.rows += batch.keys.len();
        self.bytes += bytes;
        self.queue.push_back(Spilled { keys: batch.keys, bytes });
        true
    }

    /// The oldest spilled batch, to be read back and written next.
    pub(crate) fn pop(&mut self) -> Option<Spilled> {
        let next = self.queue.pop_front()?;
        self.rows -= next.keys.len();
        self.bytes -= next.bytes;
        if self.queue.is_empty() {
            self.at_limit = false;
            tracing::info!("every spilled batch is read back; memory takes new records again");
        }
        Some(next)
    }

    /// Records spilled and not yet read back.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Approximate payload bytes spilled.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether [`offer`](Self::offer) would spill the collected batch once it is full, the
    /// sink still failing: every record so far is written ahead, and the limits leave room for
    /// a full batch (its bytes estimated from the records held) plus a new one.
    pub(crate) fn would_take(&mut self, acc: &Accumulator, held: (usize, usize)) -> bool {
        if !self.enabled || self.at_limit || acc.keys() < acc.len() {
            return false;
        }
        let records = acc.len() + held.0;
        let per_record = if records == 0 { 0 } else { (acc.bytes() + held.1).div_ceil(records) };
        self.fits(self.batch_rows, per_record * self.batch_rows, held)
    }

    /// Whether the limits leave room for spilling a batch of `rows` records and `bytes` beside
    /// `held` (the batches in flight: records, bytes) and a new batch in memory; says once when
    /// they do not.
    fn fits(&mut self, rows: usize, bytes: usize, held: (usize, usize)) -> bool {
        let total_rows = self.rows + rows + held.0 + self.batch_rows;
        let total_bytes = (self.bytes + bytes + held.1) as u64;
        if total_rows > self.max_rows || total_bytes > self.max_bytes {
            self.reached_limit();
            return false;
        }
        true
    }

    /// Nothing more may spill until the spilled batches are read back: said once.
    fn reached_limit(&mut self) {
        if !self.at_limit {
            self.at_limit = true;
            tracing::warn!(
                spilled = self.rows,
                spilled_bytes = self.bytes,
                "buffer limit reached (buffer.max_buffered_rows / max_buffered_bytes): consumption pauses until the sink recovers"
            );
        }
    }

    /// True when nothing is spilled.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytesize::ByteSize;
    use dp_core::Record;

    use super::*;

    fn config(batch: usize, max: usize) -> BatchingConfig {
        BatchingConfig {
            max_rows: batch,
            flush_interval: Duration::from_secs(30),
            max_buffered_rows: Some(max),
            max_buffered_bytes: ByteSize::mib(1),
        }
    }

    fn fill(acc: &mut Accumulator, from: i64, n: usize, with_keys: bool) {
        let records: Vec<Record> =
            (0..n as i64).map(|i| Record::new("t", 0, from + i, Some(vec![b'x'; 100]))).collect();
        let keys = if with_keys {
            records.iter().map(|r| BufferKey(r.offset.to_string())).collect()
        } else {
            Vec::new()
        };
        acc.extend(records, keys, Instant::now());
    }

    #[test]
    fn spills_full_written_ahead_batches_only_while_the_sink_fails() {
        let mut spill = Spill::new(&config(10, 100), true);
        let mut acc = Accumulator::new(10, Duration::from_secs(30));
        fill(&mut acc, 0, 10, true);
        assert!(!spill.offer(&mut acc, (10, 0), false), "a healthy sink: no spilling");
        assert!(spill.offer(&mut acc, (10, 0), true));
        assert!(acc.is_empty());
        assert_eq!(spill.rows(), 10);
        fill(&mut acc, 10, 5, true);
        assert!(!spill.offer(&mut acc, (10, 0), true), "a batch that is not full stays");
        fill(&mut acc, 15, 5, false);
        assert!(!spill.offer(&mut acc, (10, 0), true), "memory-only records stay in memory");
    }

    #[test]
    fn stops_at_the_row_limit_and_hands_batches_back_oldest_first() {
        let mut spill = Spill::new(&config(10, 50), true);
        let mut acc = Accumulator::new(10, Duration::from_secs(30));
        let mut spilled = 0;
        for i in 0..10 {
            fill(&mut acc, i * 10, 10, true);
            if spill.offer(&mut acc, (10, 0), true) {
                spilled += 1;
            } else {
                break;
            }
        }
        // 10 being written + 10 collecting + spilled ≤ 50.
        assert_eq!(spilled, 3);
        assert_eq!(spill.rows(), 30);
        let first = spill.pop().expect("a batch");
        assert_eq!(first.keys.first(), Some(&BufferKey("0".into())));
        assert_eq!(spill.rows(), 20);
        assert!(spill.pop().is_some() && spill.pop().is_some());
        assert!(spill.is_empty() && spill.pop().is_none());
    }

    #[test]
    fn stops_at_the_byte_limit() {
        let mut scratch = Accumulator::new(10, Duration::from_secs(30));
        fill(&mut scratch, 0, 10, true);
        let batch = scratch.bytes();
        let mut c = config(10, 1_000);
        c.max_buffered_bytes = ByteSize::b((batch * 5 / 2) as u64);
        let mut spill = Spill::new(&c, true);
        let mut acc = Accumulator::new(10, Duration::from_secs(30));
        fill(&mut acc, 0, 10, true);
        assert!(spill.offer(&mut acc, (10, batch), true), "one batch written + one spilled < 2.5 batches");
        fill(&mut acc, 10, 10, true);
        assert!(!spill.offer(&mut acc, (10, batch), true), "written + spilled + collected > 2.5 batches");
        assert_eq!(spill.bytes(), batch);
    }

    #[test]
    fn off_when_the_buffer_cannot_read_back_or_the_limit_is_two_batches() {
        for spill in [Spill::new(&config(10, 100), false), Spill::new(&config(10, 20), true)] {
            let mut spill = spill;
            let mut acc = Accumulator::new(10, Duration::from_secs(30));
            fill(&mut acc, 0, 10, true);
            assert!(!spill.offer(&mut acc, (0, 0), true));
        }
    }
}
