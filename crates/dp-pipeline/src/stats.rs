//! Counters of a running pipeline, readable from other tasks while it runs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters. All are totals since start except the `*_buffered` gauges.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Records received from the source.
    pub consumed: AtomicU64,
    /// Rows newly written by the sink.
    pub inserted: AtomicU64,
    /// Existing rows updated by the sink (upserts that won).
    pub updated: AtomicU64,
    /// Rows deleted, or marked deleted, by tombstones.
    pub deleted: AtomicU64,
    /// Records the sink found already stored.
    pub duplicates: AtomicU64,
    /// Records dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Records dropped by the filter (acknowledged, never stored).
    pub filtered: AtomicU64,
    /// Batches delivered.
    pub batches: AtomicU64,
    /// Records restored from the write-ahead buffer at startup.
    pub restored: AtomicU64,
    /// Records adopted from the buffers of instances whose lease expired.
    pub adopted: AtomicU64,
    /// Sink attempts that failed transiently and were retried (outages and statement faults).
    pub retries: AtomicU64,
    /// Sink attempts that failed with a statement or schema fault (retried, never
    /// dead-lettered).
    pub statement_faults: AtomicU64,
    /// Write-ahead appends or removals that failed (records stayed in memory).
    pub buffer_failures: AtomicU64,
    /// Records currently held in memory (collecting plus being written).
    pub memory_buffered: AtomicU64,
    /// Records currently held in the write-ahead buffer only, because the sink is failing.
    pub spilled: AtomicU64,
    /// 1 while the write-ahead buffer is unreachable.
    pub buffer_down: AtomicU64,
    /// Partitions with records held only in memory (not written ahead).
    pub suspended_partitions: AtomicU64,
    /// 1 while the sink is failing transiently (a batch is being retried).
    pub sink_failing: AtomicU64,
    /// 1 while the batch being retried fails with a statement or schema fault.
    pub sink_statement_fault: AtomicU64,
    /// That fault's error code and SQLSTATE, for the readiness probe (never its message, which
    /// may quote data).
    pub(crate) statement_error: Mutex<Option<String>>,
    /// 1 once startup (restore) is done and until the drain starts.
    pub consuming: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// See [`PipelineStats::consumed`].
    pub consumed: u64,
    /// See [`PipelineStats::inserted`].
    pub inserted: u64,
    /// See [`PipelineStats::updated`].
    pub updated: u64,
    /// See [`PipelineStats::deleted`].
    pub deleted: u64,
    /// See [`PipelineStats::duplicates`].
    pub duplicates: u64,
    /// See [`PipelineStats::dead_lettered`].
    pub dead_lettered: u64,
    /// See [`PipelineStats::filtered`].
    pub filtered: u64,
    /// See [`PipelineStats::batches`].
    pub batches: u64,
    /// See [`PipelineStats::restored`].
    pub restored: u64,
    /// See [`PipelineStats::adopted`].
    pub adopted: u64,
    /// See [`PipelineStats::retries`].
    pub retries: u64,
    /// See [`PipelineStats::statement_faults`].
    pub statement_faults: u64,
    /// See [`PipelineStats::buffer_failures`].
    pub buffer_failures: u64,
    /// See [`PipelineStats::memory_buffered`].
    pub memory_buffered: u64,
    /// See [`PipelineStats::spilled`].
    pub spilled: u64,
    /// See [`PipelineStats::buffer_down`].
    pub buffer_down: u64,
    /// See [`PipelineStats::suspended_partitions`].
    pub suspended_partitions: u64,
}

impl PipelineStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            consumed: self.consumed.load(Relaxed),
            inserted: self.inserted.load(Relaxed),
            updated: self.updated.load(Relaxed),
            deleted: self.deleted.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            filtered: self.filtered.load(Relaxed),
            batches: self.batches.load(Relaxed),
            restored: self.restored.load(Relaxed),
            adopted: self.adopted.load(Relaxed),
            retries: self.retries.load(Relaxed),
            statement_faults: self.statement_faults.load(Relaxed),
            buffer_failures: self.buffer_failures.load(Relaxed),
            memory_buffered: self.memory_buffered.load(Relaxed),
            spilled: self.spilled.load(Relaxed),
            buffer_down: self.buffer_down.load(Relaxed),
            suspended_partitions: self.suspended_partitions.load(Relaxed),
        }
    }

    /// Adds `n` to `counter` and to the metric `name`.
    pub(crate) fn add(counter: &AtomicU64, name: &'static str, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
        metrics::counter!(name).increment(n as u64);
    }

    /// Sets `gauge` and the metric `name` to `n`.
    pub(crate) fn set(gauge: &AtomicU64, name: &'static str, n: usize) {
        gauge.store(n as u64, Relaxed);
        crate::metrics::set(name, n);
    }

    /// Adds `n` to a counter that has no metric of its own.
    pub(crate) fn bump(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
    }
}

impl StatsSnapshot {
    /// Records done with: stored, updated, deleting, found already present or dead-lettered
    /// by the sink, or dropped by the filter.
    pub fn delivered(&self) -> u64 {
        self.inserted + self.updated + self.deleted + self.duplicates + self.dead_lettered + self.filtered
    }
}
