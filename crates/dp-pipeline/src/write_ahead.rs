//! The write-ahead side of the flush loop, and what happens when the buffer is unreachable.
//!
//! While Redis answers, every polled chunk is appended (one `MSET`) before it joins the batch.
//! When an append fails, the chunk stays in memory only and the buffer is marked unhealthy: from
//! then on nothing is appended (the loop never waits on a dead Redis) until a background probe
//! sees it answer again.
//!
//! A partition with records held only in memory is *suspended*: later records of that partition
//! are not appended either, until the memory-only ones are delivered. So the records of a
//! partition that are in Redis always form a run that starts right after what is durable in the
//! sink — a restore can never skip over a record that exists only in a dead process's memory,
//! and the watermark it raises is safe. Offsets never pass memory-only records, because they are
//! acknowledged only once the sink has them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dp_core::{Buffer, BufferKey, Record};
use tokio::task::JoinHandle;

use crate::stats::PipelineStats;

/// Appends chunks to the buffer, tracking suspended partitions and buffer health.
pub(crate) struct WriteAhead {
    buffer: Arc<dyn Buffer>,
    stats: Arc<PipelineStats>,
    healthy: Arc<AtomicBool>,
    probe: Option<JoinHandle<()>>,
    /// Partition → highest offset held only in memory.
    suspended: HashMap<(Arc<str>, i32), i64>,
}

/// The result of writing a chunk ahead.
pub(crate) struct Appended {
    /// Keys of the records that reached the buffer.
    pub keys: Vec<BufferKey>,
    /// Whether every record of the chunk reached the buffer.
    pub all: bool,
}

impl WriteAhead {
    pub(crate) fn new(buffer: Arc<dyn Buffer>, stats: Arc<PipelineStats>, healthy: Arc<AtomicBool>) -> Self {
        Self { buffer, stats, healthy, probe: None, suspended: HashMap::new() }
    }

    /// Whether the buffer is currently taking writes.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Writes ahead the records of `chunk` whose partitions are not suspended; the rest, and
    /// everything when the buffer is down, stays in memory only and suspends its partition.
    pub(crate) async fn append(&mut self, chunk: &[Record]) -> Appended {
        let mut keys = Vec::new();
        let (to_write, memory_only): (Vec<&Record>, Vec<&Record>) =
            if self.is_healthy() && self.suspended.is_empty() {
                // The common case: no per-record lookup.
                (chunk.iter().collect(), Vec::new())
            } else if self.is_healthy() {
                chunk.iter().partition(|r| !self.suspended.contains_key(&(Arc::clone(&r.topic), r.partition)))
            } else {
                (Vec::new(), chunk.iter().collect())
            };
        let mut failed: Vec<&Record> = Vec::new();
        if !to_write.is_empty() {
            let owned: Vec<Record>;
            let slice: &[Record] = if to_write.len() == chunk.len() {
                chunk
            } else {
                owned = to_write.iter().map(|r| (*r).clone()).collect();
                &owned
            };
            match self.buffer.append(slice).await {
                Ok(k) => keys = k,
                Err(e) => {
                    PipelineStats::add(&self.stats.buffer_failures, crate::metrics::BUFFER_FAILURES, 1);
                    tracing::warn!(error = %e, records = slice.len(), "write-ahead buffer unreachable: holding records in memory only; offsets wait until they are in the sink");
                    self.mark_unhealthy();
                    failed = to_write;
                }
            }
        }
        let all = memory_only.is_empty() && failed.is_empty();
        for r in memory_only.into_iter().chain(failed) {
            let e = self.suspended.entry((Arc::clone(&r.topic), r.partition)).or_insert(r.offset);
            *e = (*e).max(r.offset);
        }
        PipelineStats::set(&self.stats.suspended_partitions, crate::metrics::SUSPENDED, self.suspended.len());
        Appended { keys, all }
    }

    /// Records of a delivered batch: partitions whose memory-only records are all delivered
    /// are written ahead again.
    pub(crate) fn delivered(&mut self, records: &[Record]) {
        if self.suspended.is_empty() {
            return;
        }
        for r in records {
            let key = (Arc::clone(&r.topic), r.partition);
            if self.suspended.get(&key).is_some_and(|&max| r.offset >= max) {
                self.suspended.remove(&key);
            }
        }
        PipelineStats::set(&self.stats.suspended_partitions, crate::metrics::SUSPENDED, self.suspended.len());
    }

    fn mark_unhealthy(&mut self) {
        self.healthy.store(false, Ordering::Relaxed);
        PipelineStats::set(&self.stats.buffer_down, crate::metrics::BUFFER_DOWN, 1);
        if self.probe.as_ref().is_some_and(|p| !p.is_finished()) {
            return;
        }
        let (buffer, healthy, stats) =
            (Arc::clone(&self.buffer), Arc::clone(&self.healthy), Arc::clone(&self.stats));
        self.probe = Some(tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            loop {
                tokio::time::sleep(delay).await;
                if buffer.healthcheck().await.is_ok() {
                    tracing::info!("write-ahead buffer reachable again; resuming backups");
                    healthy.store(true, Ordering::Relaxed);
                    PipelineStats::set(&stats.buffer_down, crate::metrics::BUFFER_DOWN, 0);
                    return;
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }));
    }
}

impl Drop for WriteAhead {
    fn drop(&mut self) {
        if let Some(p) = self.probe.take() {
            p.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use dp_core::BufferError;

    use super::*;

    struct FlakyBuffer {
        up: AtomicBool,
        appended: Mutex<Vec<i64>>,
    }

    #[async_trait]
    impl Buffer for FlakyBuffer {
        async fn append(&self, records: &[Record]) -> Result<Vec<BufferKey>, BufferError> {
            if !self.up.load(Ordering::Relaxed) {
                return Err(BufferError::transient("connection refused"));
            }
            self.appended.lock().expect("lock").extend(records.iter().map(|r| r.offset));
            Ok(records.iter().map(|r| BufferKey(r.offset.to_string())).collect())
        }
        async fn remove(&self, _: &[BufferKey]) -> Result<(), BufferError> {
            Ok(())
        }
        async fn restore(&self) -> Result<Vec<(BufferKey, Record)>, BufferError> {
            Ok(Vec::new())
        }
        async fn healthcheck(&self) -> Result<(), BufferError> {
            if self.up.load(Ordering::Relaxed) { Ok(()) } else { Err(BufferError::transient("down")) }
        }
    }

    fn rec(partition: i32, offset: i64) -> Record {
        Record::new("t", partition, offset, None)
    }

    /// The records of a partition that reach the buffer never leave a hole: after a failed
    /// append, a partition is not written ahead again until its memory-only records are
    /// delivered.
    #[tokio::test]
    async fn no_holes_after_an_outage() {
        let buffer = Arc::new(FlakyBuffer { up: AtomicBool::new(true), appended: Mutex::default() });
        let healthy = Arc::new(AtomicBool::new(true));
        let mut wa = WriteAhead::new(Arc::clone(&buffer) as Arc<dyn Buffer>, Arc::default(), healthy);
        assert!(wa.append(&[rec(0, 0), rec(1, 0)]).await.all);
        buffer.up.store(false, Ordering::Relaxed);
        let a = wa.append(&[rec(0, 1)]).await;
        assert!(!a.all && a.keys.is_empty());
        assert!(!wa.is_healthy());
        buffer.up.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(wa.is_healthy(), "the probe notices recovery");
        // Partition 0 has offset 1 in memory only: offset 2 must not be written ahead yet;
        // partition 1 is fine.
        let a = wa.append(&[rec(0, 2), rec(1, 1)]).await;
        assert!(!a.all);
        assert_eq!(*buffer.appended.lock().expect("lock"), vec![0, 0, 1]);
        wa.delivered(&[rec(0, 1), rec(0, 2)]);
        assert!(wa.append(&[rec(0, 3)]).await.all, "resumed once the memory-only records were delivered");
        assert_eq!(*buffer.appended.lock().expect("lock"), vec![0, 0, 1, 3]);
    }
}
