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
    fn can_fetch(&self) -> bool {
        true
    }
    async fn fetch(&self, keys: &[BufferKey]) -> Result<Vec<Option<Record>>, BufferError> {
        let map = self.map.lock().expect("lock");
        Ok(keys.iter().map(|k| map.get(&k.0).cloned()).collect())
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
    /// Fails every write transiently while set.
    down: std::sync::atomic::AtomicBool,
    /// Offsets in the order they were first written.
    order: Mutex<Vec<i64>>,
}

#[async_trait]
impl Sink for MemSink {
    async fn write_batch(&self, records: &[Record]) -> Result<BatchOutcome, SinkError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.transient_failures.load(Ordering::Relaxed) > 0 {
            self.transient_failures.fetch_sub(1, Ordering::Relaxed);
            return Err(SinkError::transient("connection reset"));
        }
        if self.down.load(Ordering::Relaxed) {
            return Err(SinkError::transient("connection refused"));
        }
        if records.iter().any(|r| self.refuse.contains(&r.offset)) {
            return Err(SinkError::permanent("data too long").with_code(1406, Some("22001".into())));
        }
        let mut rows = self.rows.lock().expect("lock");
        let mut order = self.order.lock().expect("lock");
        let inserted =
            records.iter().filter(|r| rows.insert(r.offset)).inspect(|r| order.push(r.offset)).count();
        self.batches.lock().expect("lock").push(records.len());
        Ok(BatchOutcome { inserted, duplicates: records.len() - inserted, ..BatchOutcome::default() })
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
        BufferConfig { max_rows, flush_interval: interval, ..BufferConfig::default() },
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

/// Batches of 10, at most 100 records held: 10 being written, 10 collected, 80 spilled.
fn spilling_pipeline(source: &VecSource, buffer: &Arc<MemBuffer>, sink: &Arc<MemSink>) -> Pipeline {
    Pipeline::new(
        Box::new(source.clone()),
        Arc::clone(buffer) as Arc<dyn Buffer>,
        Arc::clone(sink) as Arc<dyn Sink>,
        BufferConfig {
            max_rows: 10,
            flush_interval: Duration::from_secs(3600),
            max_buffered_rows: Some(100),
            ..BufferConfig::default()
        },
        retry(),
        Duration::from_secs(5),
    )
}

#[tokio::test]
async fn while_the_sink_is_down_full_batches_spill_to_the_buffer_up_to_the_limit_then_drain_in_order() {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    let source = VecSource::with(500);
    let buffer = Arc::new(MemBuffer::default());
    let sink = Arc::new(MemSink { down: AtomicBool::new(true), ..MemSink::default() });
    let p = spilling_pipeline(&source, &buffer, &sink);
    let (peak_spilled, consumed_at_limit) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (peak, at_limit, s2) = (Arc::clone(&peak_spilled), Arc::clone(&consumed_at_limit), Arc::clone(&sink));
    let summary = run_until(p, move |s| {
        peak.fetch_max(s.spilled, Ordering::Relaxed);
        // 10 being retried + 80 spilled + 10 collected = the limit of 100.
        if s.spilled == 80 && s2.down.load(Ordering::Relaxed) {
            // Give the loop time to show it takes nothing more.
            std::thread::sleep(Duration::from_millis(600));
            at_limit.store(s2.calls.load(Ordering::Relaxed) as u64, Ordering::Relaxed);
            s2.down.store(false, Ordering::Relaxed);
        }
        s.inserted == 500
    })
    .await
    .expect("runs");
    assert_eq!(peak_spilled.load(Ordering::Relaxed), 80, "spilled up to the limit, never past it");
    assert!(
        consumed_at_limit.load(Ordering::Relaxed) > 0,
        "the sink came back only once the limit was reached"
    );
    assert_eq!(summary.stats.inserted, 500);
    assert_eq!(summary.stats.spilled, 0);
    let order = sink.order.lock().expect("lock").clone();
    for partition in 0..2 {
        let offsets: Vec<i64> = order.iter().copied().filter(|o| o % 2 == partition).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "partition {partition} written in offset order");
    }
    assert_eq!(source.acked(), (0..500).collect());
    assert!(buffer.map.lock().expect("lock").is_empty(), "every spilled copy deleted once delivered");
}

#[tokio::test]
async fn spilled_records_missing_from_the_buffer_stop_the_pipeline_before_anything_later_is_written() {
    use std::sync::atomic::AtomicBool;
    let source = VecSource::with(60);
    let buffer = Arc::new(MemBuffer::default());
    let sink = Arc::new(MemSink { down: AtomicBool::new(true), ..MemSink::default() });
    let p = spilling_pipeline(&source, &buffer, &sink);
    let (b2, s2) = (Arc::clone(&buffer), Arc::clone(&sink));
    let err = run_until(p, move |s| {
        if s.spilled >= 20 && s2.down.load(Ordering::Relaxed) {
            // The buffer loses everything (a restart without persistence), then the sink is back.
            b2.map.lock().expect("lock").clear();
            s2.down.store(false, Ordering::Relaxed);
        }
        false
    })
    .await
    .expect_err("must stop");
    assert!(matches!(err, PipelineError::BufferLost { .. }), "{err}");
    let written = sink.rows.lock().expect("lock").clone();
    assert!(written.iter().all(|o| *o < 10), "only the batch that was in memory is written: {written:?}");
    assert!(source.acked().iter().all(|o| *o < 10), "nothing after the lost records is acknowledged");
}
