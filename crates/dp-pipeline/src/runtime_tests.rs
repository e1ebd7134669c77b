//! The flush loop against in-memory parts: triggers, restore, retries, isolation of bad rows.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dp_core::{
    BatchOutcome, Buffer, BufferError, BufferKey, DeadLetter, Record, Sink, SinkError, Source, SourceError,
};

use super::*;

fn rec(offset: i64) -> Record {
    Record::new("t", (offset % 2) as i32, offset, Some(format!("{{\"n\":{offset}}}").into_bytes()))
}

#[derive(Default, Clone)]
struct VecSource {
    queue: Arc<Mutex<VecDeque<Record>>>,
    acked: Arc<Mutex<Vec<i64>>>,
}

impl VecSource {
    fn with(n: i64) -> Self {
        let s = Self::default();
        s.queue.lock().expect("lock").extend((0..n).map(rec));
        s
    }
    fn acked(&self) -> BTreeSet<i64> {
        self.acked.lock().expect("lock").iter().copied().collect()
    }
}

#[async_trait]
impl Source for VecSource {
    async fn poll(&mut self, max: usize) -> Result<Vec<Record>, SourceError> {
        loop {
            {
                let mut q = self.queue.lock().expect("lock");
                if !q.is_empty() {
                    let n = max.min(q.len());
                    return Ok(q.drain(..n).collect());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    fn acknowledge(&mut self, delivered: &[Record]) -> Result<(), SourceError> {
        self.acked.lock().expect("lock").extend(delivered.iter().map(|r| r.offset));
        Ok(())
    }
}

#[derive(Default)]
struct MemBuffer {
    map: Mutex<BTreeMap<String, Record>>,
    next: AtomicUsize,
}

#[async_trait]
impl Buffer for MemBuffer {
    async fn append(&self, records: &[Record]) -> Result<Vec<BufferKey>, BufferError> {
        let mut map = self.map.lock().expect("lock");
        Ok(records
            .iter()
            .map(|r| {
                let k = format!("k{:08}", self.next.fetch_add(1, Ordering::Relaxed));
                map.insert(k.clone(), r.clone());
                BufferKey(k)
            })
            .collect())
    }
    async fn remove(&self, keys: &[BufferKey]) -> Result<(), BufferError> {
        let mut map = self.map.lock().expect("lock");
        for k in keys {
            map.remove(&k.0);
        }
        Ok(())
    }
    async fn restore(&self) -> Result<Vec<(BufferKey, Record)>, BufferError> {
        Ok(self.map.lock().expect("lock").iter().map(|(k, r)| (BufferKey(k.clone()), r.clone())).collect())
    }
}

#[derive(Default)]
struct MemSink {
    rows: Mutex<BTreeSet<i64>>,
    dead: Mutex<BTreeSet<i64>>,
    batches: Mutex<Vec<usize>>,
    calls: AtomicUsize,
    transient_failures: AtomicUsize,
    refuse: BTreeSet<i64>,
    no_dead_letter: bool,
}

#[async_trait]
impl Sink for MemSink {
    async fn write_batch(&self, records: &[Record]) -> Result<BatchOutcome, SinkError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.transient_failures.load(Ordering::Relaxed) > 0 {
            self.transient_failures.fetch_sub(1, Ordering::Relaxed);
            return Err(SinkError::transient("connection reset"));
        }
        if records.iter().any(|r| self.refuse.contains(&r.offset)) {
            return Err(SinkError::permanent("data too long").with_code(1406, Some("22001".into())));
        }
        let mut rows = self.rows.lock().expect("lock");
        let inserted = records.iter().filter(|r| rows.insert(r.offset)).count();
        self.batches.lock().expect("lock").push(records.len());
        Ok(BatchOutcome { inserted, duplicates: records.len() - inserted, dead_lettered: 0 })
    }
    async fn dead_letter(&self, entries: &[DeadLetter]) -> Result<(), SinkError> {
        if self.no_dead_letter {
            return Err(SinkError::permanent("no dead-letter destination"));
        }
        for e in entries {
            assert_eq!(e.code, Some(1406), "the store's error code travels to the dead letter");
            self.dead.lock().expect("lock").insert(e.record.offset);
        }
        Ok(())
    }
}

fn retry() -> RetryConfig {
    RetryConfig {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..RetryConfig::default()
    }
}

fn pipeline(
    source: &VecSource,
    buffer: &Arc<MemBuffer>,
    sink: &Arc<MemSink>,
    max_rows: usize,
    interval: Duration,
) -> Pipeline {
    Pipeline::new(
        Box::new(source.clone()),
        Arc::clone(buffer) as Arc<dyn Buffer>,
        Arc::clone(sink) as Arc<dyn Sink>,
        BufferConfig { max_rows, flush_interval: interval },
        retry(),
        Duration::from_secs(5),
    )
}

/// Runs until `done` says so (or 10 s pass), then shuts down.
async fn run_until(
    p: Pipeline,
    done: impl Fn(&StatsSnapshot) -> bool + Send + 'static,
) -> Result<RunSummary, PipelineError> {
    let stats = p.stats();
    p.run(async move {
        for _ in 0..1000 {
            if done(&stats.snapshot()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn full_batches_flush_by_size_and_the_rest_at_shutdown() {
    let source = VecSource::with(25);
    let (buffer, sink) = (Arc::new(MemBuffer::default()), Arc::new(MemSink::default()));
    let p = pipeline(&source, &buffer, &sink, 10, Duration::from_secs(3600));
    let summary = run_until(p, |s| s.consumed == 25 && s.batches == 2).await.expect("runs");
    assert_eq!(
        *sink.batches.lock().expect("lock"),
        vec![10, 10, 5],
        "two size flushes, then the shutdown flush"
    );
    assert_eq!(summary.stats.inserted, 25);
    assert_eq!(source.acked(), (0..25).collect());
    assert!(buffer.map.lock().expect("lock").is_empty(), "delivered records leave the write-ahead buffer");
}

#[tokio::test]
async fn a_partial_batch_flushes_after_the_interval() {
    let source = VecSource::with(3);
    let (buffer, sink) = (Arc::new(MemBuffer::default()), Arc::new(MemSink::default()));
    let p = pipeline(&source, &buffer, &sink, 1000, Duration::from_millis(50));
    let summary = run_until(p, |s| s.batches >= 1).await.expect("runs");
    assert_eq!(summary.stats.inserted, 3);
    assert_eq!(*sink.batches.lock().expect("lock"), vec![3]);
}

#[tokio::test]
async fn records_left_in_the_buffer_are_delivered_before_consuming() {
    let buffer = Arc::new(MemBuffer::default());
    buffer.append(&(100..105).map(rec).collect::<Vec<_>>()).await.expect("seed");
    let source = VecSource::with(0);
    let sink = Arc::new(MemSink::default());
    let p = pipeline(&source, &buffer, &sink, 2, Duration::from_secs(3600));
    let summary = run_until(p, |_| true).await.expect("runs");
    assert_eq!(summary.stats.restored, 5);
    assert_eq!(*sink.rows.lock().expect("lock"), (100..105).collect());
    assert!(buffer.map.lock().expect("lock").is_empty());
    assert!(source.acked().is_empty(), "restored records were never read from this source");
}

#[tokio::test]
async fn transient_failures_are_retried_until_they_pass() {
    let source = VecSource::with(4);
    let buffer = Arc::new(MemBuffer::default());
    let sink = Arc::new(MemSink { transient_failures: AtomicUsize::new(3), ..MemSink::default() });
    let p = pipeline(&source, &buffer, &sink, 4, Duration::from_secs(3600));
    let summary = run_until(p, |s| s.batches == 1).await.expect("runs");
    assert_eq!(summary.stats.retries, 3);
    assert_eq!(summary.stats.inserted, 4);
    assert_eq!(summary.stats.dead_lettered, 0, "an outage never dead-letters");
}

#[tokio::test]
async fn refused_records_are_isolated_by_halving_and_dead_lettered() {
    let source = VecSource::with(16);
    let buffer = Arc::new(MemBuffer::default());
    let sink = Arc::new(MemSink { refuse: [3, 11].into(), ..MemSink::default() });
    let p = pipeline(&source, &buffer, &sink, 16, Duration::from_secs(3600));
    let summary = run_until(p, |s| s.batches == 1).await.expect("runs");
    assert_eq!(summary.stats.inserted, 14);
    assert_eq!(summary.stats.dead_lettered, 2);
    assert_eq!(*sink.dead.lock().expect("lock"), [3, 11].into());
    assert_eq!(source.acked(), (0..16).collect());
    // Halving: 1 + 2 per level per bad record at most (log2 16 = 4 levels), far below 16.
    let calls = sink.calls.load(Ordering::Relaxed);
    assert!(calls <= 1 + 2 * 2 * 4, "{calls} statements for 2 bad rows of 16");
}

#[tokio::test]
async fn a_record_that_cannot_be_dead_lettered_stops_the_pipeline_without_acknowledging() {
    let source = VecSource::with(4);
    let buffer = Arc::new(MemBuffer::default());
    let sink = Arc::new(MemSink { refuse: [2].into(), no_dead_letter: true, ..MemSink::default() });
    let p = pipeline(&source, &buffer, &sink, 4, Duration::from_secs(3600));
    let err = run_until(p, |_| false).await.expect_err("must stop");
    assert!(matches!(err, PipelineError::Undeliverable { offset: 2, .. }), "{err}");
    assert!(source.acked().is_empty(), "nothing of the failed batch is acknowledged");
    assert_eq!(buffer.map.lock().expect("lock").len(), 4, "the write-ahead copies stay for the next start");
}
