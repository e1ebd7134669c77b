//! The flush loop against in-memory parts: triggers, restore, retries, isolation of bad rows,
//! spilling, and, as a property, batch size, memory bound and order for any poll sizes.
//!
//! Every test runs on paused tokio time: sleeps, backoffs and flush intervals elapse as soon as
//! the runtime has nothing else to do, so the tests take no wall time and do not depend on the
//! machine's speed. A test that waits for something that never happens fails with the
//! pipeline's counters instead of letting the shutdown drain do the work quietly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dp_core::{
    BatchOutcome, Buffer, BufferError, BufferKey, DeadLetter, Record, Sink, SinkError, Source, SourceError,
};
use proptest::prelude::*;

use super::*;
use crate::{BatchingConfig, RetryConfig};

/// How long, in tokio time, [`run_until`] waits for its condition.
const PATIENCE: Duration = Duration::from_secs(10);

static EVENTS: AtomicU64 = AtomicU64::new(0);

/// When something happened: its place among all recorded events (exact even where paused time
/// gives two events the same instant), and the tokio time.
#[derive(Debug, Clone, Copy)]
struct Mark {
    seq: u64,
    at: tokio::time::Instant,
}

impl Mark {
    fn now() -> Self {
        Self { seq: EVENTS.fetch_add(1, Ordering::SeqCst), at: tokio::time::Instant::now() }
    }
}

fn rec(offset: i64) -> Record {
    Record::new("t", (offset % 2) as i32, offset, Some(format!("{{\"n\":{offset}}}").into_bytes()))
}

#[derive(Default, Clone)]
struct VecSource {
    queue: Arc<Mutex<VecDeque<Record>>>,
    acked: Arc<Mutex<Vec<i64>>>,
    /// Every poll that returned records: when, and how many.
    polls: Arc<Mutex<Vec<(Mark, usize)>>>,
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
    fn polls(&self) -> Vec<(Mark, usize)> {
        self.polls.lock().expect("lock").clone()
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
                    self.polls.lock().expect("lock").push((Mark::now(), n));
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
    fn read_back(&self) -> Option<&dyn dp_core::ReadBack> {
        Some(self)
    }
}

#[async_trait]
impl dp_core::ReadBack for MemBuffer {
    async fn fetch(&self, keys: &[BufferKey]) -> Result<Vec<Option<Record>>, BufferError> {
        let map = self.map.lock().expect("lock");
        Ok(keys.iter().map(|k| map.get(&k.0).cloned()).collect())
    }
}

/// A batch the sink stored: when, and the offsets in it.
#[derive(Debug, Clone)]
struct Written {
    mark: Mark,
    offsets: Vec<i64>,
}

#[derive(Default)]
struct MemSink {
    rows: Mutex<BTreeSet<i64>>,
    dead: Mutex<BTreeSet<i64>>,
    /// Every batch stored, in order.
    written: Mutex<Vec<Written>>,
    calls: AtomicUsize,
    transient_failures: AtomicUsize,
    refuse: BTreeSet<i64>,
    /// Records the sink dead-letters itself, inside the batch: odd offsets with the class
    /// `odd_shape`, even ones with none.
    in_batch: BTreeSet<i64>,
    /// Refuses the `refuse` records with a presumed data fault (an unknown code of a data class)
    /// instead of a known one.
    presumed: bool,
    no_dead_letter: bool,
    /// Fails every write transiently while set.
    down: AtomicBool,
    /// Refuses every write with a statement fault while set (a column dropped, say).
    statement_fault: AtomicBool,
    /// Refuses every write while set with the same presumed data fault: a statement fault the
    /// sink does not know as one.
    refuse_all_presumed: AtomicBool,
    /// Sizes of the writes refused while one of the two above was set.
    refused_whole: Mutex<Vec<usize>>,
    /// Every batch handed over (`write_batch_in_turn`): when, and its first offset.
    handed: Mutex<Vec<(Mark, i64)>>,
    /// How long each write takes.
    write_time: Duration,
    /// Fails this many writes of a batch holding offset 0 transiently.
    first_batch_failures: AtomicUsize,
}

impl MemSink {
    /// How this sink refuses a record: a known data fault, or a presumed one.
    fn refusal(&self) -> SinkError {
        if self.presumed || self.refuse_all_presumed.load(Ordering::Relaxed) {
            SinkError::permanent("insert into `t` failed: a new kind of refusal")
                .with_code(1999, Some("23999".into()))
                .presumed()
        } else {
            SinkError::permanent("data too long").with_code(1406, Some("22001".into()))
        }
    }
    fn dead(&self) -> BTreeSet<i64> {
        self.dead.lock().expect("lock").clone()
    }
    fn written(&self) -> Vec<Written> {
        self.written.lock().expect("lock").clone()
    }
    fn sizes(&self) -> Vec<usize> {
        self.written().iter().map(|w| w.offsets.len()).collect()
    }
}

#[async_trait]
impl Sink for MemSink {
    async fn write_batch_in_turn(
        &self,
        records: &[Record],
        turn: &dp_core::Turn,
    ) -> Result<BatchOutcome, SinkError> {
        let first = records.first().map_or(-1, |r| r.offset);
        self.handed.lock().expect("lock").push((Mark::now(), first));
        turn.wait().await?;
        self.write_batch(records).await
    }
    async fn write_batch(&self, records: &[Record]) -> Result<BatchOutcome, SinkError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.write_time).await;
        if records.iter().any(|r| r.offset == 0) && self.first_batch_failures.load(Ordering::Relaxed) > 0 {
            self.first_batch_failures.fetch_sub(1, Ordering::Relaxed);
            return Err(SinkError::transient("connection reset"));
        }
        if self.transient_failures.load(Ordering::Relaxed) > 0 {
            self.transient_failures.fetch_sub(1, Ordering::Relaxed);
            return Err(SinkError::transient("connection reset"));
        }
        if self.down.load(Ordering::Relaxed) {
            return Err(SinkError::transient("connection refused"));
        }
        if self.statement_fault.load(Ordering::Relaxed) {
            self.refused_whole.lock().expect("lock").push(records.len());
            return Err(SinkError::statement(
                "insert into `t` failed: Unknown column 'status' in 'field list'",
            )
            .with_code(1054, Some("42S22".into())));
        }
        if self.refuse_all_presumed.load(Ordering::Relaxed) {
            self.refused_whole.lock().expect("lock").push(records.len());
            return Err(self.refusal());
        }
        if records.iter().any(|r| self.refuse.contains(&r.offset)) {
            return Err(self.refusal());
        }
        let mut outcome = BatchOutcome::default();
        let mut rows = self.rows.lock().expect("lock");
        for r in records {
            if !self.in_batch.contains(&r.offset) {
                outcome.inserted += usize::from(rows.insert(r.offset));
            } else if r.offset % 2 == 1 {
                outcome.dead_letter("odd_shape");
            } else {
                outcome.dead_lettered += 1;
            }
        }
        outcome.duplicates = records.len() - outcome.inserted - outcome.dead_lettered;
        let offsets = records.iter().map(|r| r.offset).collect();
        self.written.lock().expect("lock").push(Written { mark: Mark::now(), offsets });
        Ok(outcome)
    }
    async fn dead_letter(&self, entries: &[DeadLetter]) -> Result<(), SinkError> {
        if self.no_dead_letter {
            return Err(SinkError::permanent("no dead-letter destination"));
        }
        for e in entries {
            // Its data refusal's code, or a statement fault's (1054), which the tests that use
            // one check is never dead-lettered.
            assert!(
                e.code == self.refusal().code() || e.code == Some(1054),
                "the store's error code travels to the dead letter: {:?}",
                e.code
            );
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
        PipelineOptions::new()
            .buffer(BatchingConfig { max_rows, flush_interval: interval, ..BatchingConfig::default() })
            .retry(retry())
            .shutdown_timeout(Duration::from_secs(5)),
    )
    .expect("valid options")
}

/// A run that ended because [`run_until`] asked it to.
#[derive(Debug)]
struct Stopped {
    summary: RunSummary,
    /// When the condition held and shutdown was requested.
    requested: Mark,
}

/// Runs `p` until `done` holds, then shuts it down.
///
/// Panics, with the last counters, when `done` does not hold within [`PATIENCE`] of tokio time:
/// the shutdown drain would otherwise write what the behaviour under test should have written,
/// and the test would pass without it.
async fn run_until(
    p: Pipeline,
    what: &'static str,
    mut done: impl FnMut(&StatsSnapshot) -> bool + Send + 'static,
) -> Result<Stopped, PipelineError> {
    let stats = p.stats();
    let requested = Arc::new(Mutex::new(None));
    let mark = Arc::clone(&requested);
    let give_up = tokio::time::Instant::now() + PATIENCE;
    let summary = p
        .run(async move {
            loop {
                let last = stats.snapshot();
                if done(&last) {
                    *mark.lock().expect("lock") = Some(Mark::now());
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < give_up,
                    "{what}: did not happen within {PATIENCE:?} (tokio time); last stats: {last:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await?;
    let requested = requested.lock().expect("lock").take().expect("a clean run ends on request");
    Ok(Stopped { summary, requested })
}

#[tokio::test(start_paused = true)]
async fn full_batches_flush_by_size_and_the_rest_at_shutdown() {
    let source = VecSource::with(25);
    let (buffer, sink) = (Arc::new(MemBuffer::default()), Arc::new(MemSink::default()));
    let p = pipeline(&source, &buffer, &sink, 10, Duration::from_secs(3600));
    let stopped =
        run_until(p, "two full batches written", |s| s.consumed == 25 && s.batches == 2).await.expect("runs");
    assert_eq!(sink.sizes(), vec![10, 10, 5], "two size flushes, then the shutdown flush");
    let written = sink.written();
    assert!(
        written[..2].iter().all(|w| w.mark.seq < stopped.requested.seq),
        "the full batches are written as they fill up, before shutdown is requested"
    );
    assert!(stopped.requested.seq < written[2].mark.seq, "the partial batch waits for the shutdown drain");
    assert_eq!(stopped.summary.stats.inserted, 25);
    assert_eq!(source.acked(), (0..25).collect());
    assert!(buffer.map.lock().expect("lock").is_empty(), "delivered records leave the write-ahead buffer");
}

#[tokio::test(start_paused = true)]
async fn the_next_batch_is_handed_over_while_one_is_written_and_written_only_after_it() {
    let source = VecSource::with(30);
    let buffer = Arc::new(MemBuffer::default());
    let sink = Arc::new(MemSink { write_time: Duration::from_millis(200), ..MemSink::default() });
    let p = pipeline(&source, &buffer, &sink, 10, Duration::from_secs(3600));
    run_until(p, "three batches written", |s| s.batches == 3).await.expect("runs");
    let handed = sink.handed.lock().expect("lock").clone();
    let written = sink.written();
    assert_eq!(written.iter().map(|w| w.offsets[0]).collect::<Vec<_>>(), vec![0, 10, 20]);
    assert_eq!(handed.iter().map(|h| h.1).collect::<Vec<_>>(), vec![0, 10, 20]);
    for n in 1..3 {
        assert!(
            handed[n].0.at < written[n - 1].mark.at,
            "batch {n} is handed to the sink while batch {} is written: handed at {:?}, that one written at {:?}",
            n - 1,
            handed[n].0.at,
            written[n - 1].mark.at
        );
        assert!(
            written[n].mark.at >= written[n - 1].mark.at + Duration::from_millis(200),
            "batch {n} is written from its turn on, after batch {}",
            n - 1
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_handed_over_behind_one_being_retried_waits_for_it() {
    let source = VecSource::with(20);
    let buffer = Arc::new(MemBuffer::default());
    let sink = Arc::new(MemSink {
        write_time: Duration::from_millis(50),
        first_batch_failures: AtomicUsize::new(5),
        ..MemSink::default()
    });
    let p = pipeline(&source, &buffer, &sink, 10, Duration::from_secs(3600));
    run_until(p, "both batches written", |s| s.batches == 2).await.expect("runs");
    let handed = sink.handed.lock().expect("lock").clone();
    assert!(handed.iter().any(|h| h.1 == 10), "the second batch was handed over");
    let order: Vec<i64> = sink.written().iter().map(|w| w.offsets[0]).collect();
    // Written before the first, it would raise a watermark past records not yet stored.
    assert_eq!(order, vec![0, 10], "the second batch is written only once the first one is");
    assert!(
        sink.calls.load(Ordering::Relaxed) >= 7,
        "the first batch was retried five times before it was written"
    );
    assert_eq!(source.acked(), (0..20).collect());
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_flushes_after_the_interval() {
    const INTERVAL: Duration = Duration::from_secs(5);
    let source = VecSource::with(3);
    let (buffer, sink) = (Arc::new(MemBuffer::default()), Arc::new(MemSink::default()));
    let p = pipeline(&source, &buffer, &sink, 1000, INTERVAL);
    let stopped = run_until(p, "the partial batch written", |s| s.batches >= 1).await.expect("runs");
    assert_eq!(stopped.summary.stats.inserted, 3);
    assert_eq!(sink.sizes(), vec![3]);
    let written = &sink.written()[0];
    assert!(
        written.mark.seq < stopped.requested.seq,
        "written by the interval trigger, before shutdown was requested"
    );
    let waited = written.mark.at - source.polls()[0].0.at;
    assert!(
        waited >= INTERVAL,
        "written {waited:?} after the records arrived, before the {INTERVAL:?} interval"
    );
    // The deadline runs on tokio's clock (the one paused here), so the interval is exact.
    assert!(waited < INTERVAL + Duration::from_millis(50), "written {waited:?} after the records arrived");
}

/// Hands out `n` records once, then fails every poll transiently (a broker gone).
struct FailingSource {
    first: Option<Vec<Record>>,
    arrived: Arc<Mutex<Option<tokio::time::Instant>>>,
    failures: Arc<AtomicUsize>,
}

#[async_trait]
impl Source for FailingSource {
    async fn poll(&mut self, _max: usize) -> Result<Vec<Record>, SourceError> {
        if let Some(records) = self.first.take() {
            *self.arrived.lock().expect("lock") = Some(tokio::time::Instant::now());
            return Ok(records);
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        Err(SourceError::transient("all brokers down"))
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_source_holds_up_neither_the_interval_nor_the_batch_in_flight() {
    const INTERVAL: Duration = Duration::from_millis(200);
    let arrived = Arc::new(Mutex::new(None));
    let failures = Arc::new(AtomicUsize::new(0));
    let source = FailingSource {
        first: Some((0..3).map(rec).collect()),
        arrived: Arc::clone(&arrived),
        failures: Arc::clone(&failures),
    };
    let (buffer, sink) = (Arc::new(MemBuffer::default()), Arc::new(MemSink::default()));
    let p = Pipeline::new(
        Box::new(source),
        Arc::clone(&buffer) as Arc<dyn Buffer>,
        Arc::clone(&sink) as Arc<dyn Sink>,
        PipelineOptions::new()
            .buffer(BatchingConfig { max_rows: 1000, flush_interval: INTERVAL, ..BatchingConfig::default() })
            .retry(retry())
            .shutdown_timeout(Duration::from_secs(5)),
    )
    .expect("valid options");
    let stopped = run_until(p, "the partial batch written", |s| s.batches >= 1).await.expect("runs");
    let written = &sink.written()[0];
    assert!(written.mark.seq < stopped.requested.seq, "written by the interval, before shutdown");
    let arrived = arrived.lock().expect("lock").expect("records arrived");
    let waited = written.mark.at - arrived;
    assert!(
        waited < INTERVAL + Duration::from_millis(50),
        "written {waited:?} after the records arrived: the failed polls' 1 s rest held up the {INTERVAL:?} interval"
    );
    assert!(failures.load(Ordering::Relaxed) >= 1, "the source did fail meanwhile");
}

#[tokio::test(start_paused = true)]
async fn records_left_in_the_buffer_are_delivered_before_consuming() {
    let buffer = Arc::new(MemBuffer::default());
    buffer.append(&(100..105).map(rec).collect::<Vec<_>>()).await.expect("seed");
    let source = VecSource::with(3);
    let sink = Arc::new(MemSink::default());
    let p = pipeline(&source, &buffer, &sink, 2, Duration::from_secs(3600));
    let stopped =
        run_until(p, "restored and consumed", |s| s.restored == 5 && s.consumed == 3).await.expect("runs");
    assert_eq!(stopped.summary.stats.restored, 5);
    let first_poll = source.polls()[0].0;
    let restored: Vec<Written> =
        sink.written().into_iter().filter(|w| w.offsets.iter().any(|o| *o >= 100)).collect();
    assert_eq!(
        restored.iter().map(|w| w.offsets.len()).collect::<Vec<_>>(),
        vec![2, 2, 1],
        "in batches of max_rows"
    );
    assert!(
        restored.iter().all(|w| w.mark.seq < first_poll.seq),
        "every restored record is written before the source is read"
    );
    assert_eq!(*sink.rows.lock().expect("lock"), (0..3).chain(100..105).collect());
    assert!(buffer.map.lock().expect("lock").is_empty());
    assert_eq!(source.acked(), (0..3).collect(), "restored records were never read from this source");
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_until_they_pass() {
    let source = VecSource::with(4);
    let buffer = Arc::new(MemBuffer::default());
    let sink = Arc::new(MemSink { transient_failures: AtomicUsize::new(3), ..MemSink::default() });
    let p = pipeline(&source, &buffer, &sink, 4, Duration::from_secs(3600));
    let stopped = run_until(p, "the batch written", |s| s.batches == 1).await.expect("runs");
    assert_eq!(stopped.summary.stats.retries, 3);
    assert_eq!(stopped.summary.stats.inserted, 4);
    assert_eq!(stopped.summary.stats.dead_lettered, 0, "an outage never dead-letters");
    assert!(sink.written()[0].mark.seq < stopped.requested.seq, "retried by the flush, not by the drain");
}

#[tokio::test(start_paused = true)]
async fn refused_records_are_isolated_by_halving_and_dead_lettered() {
    let source = VecSource::with(16);
    let buffer = Arc::new(MemBuffer::default());
    let sink = Arc::new(MemSink { refuse: [3, 11].into(), ..MemSink::default() });
    let p = pipeline(&source, &buffer, &sink, 16, Duration::from_secs(3600));
    let stopped = run_until(p, "the batch delivered", |s| s.batches == 1).await.expect("runs");
    assert_eq!(stopped.summary.stats.inserted, 14);
    assert_eq!(stopped.summary.stats.dead_lettered, 2);
    assert_eq!(*sink.dead.lock().expect("lock"), [3, 11].into());
    assert_eq!(source.acked(), (0..16).collect());
    // Halving: 1 + 2 per level per bad record at most (log2 16 = 4 levels), far below 16.
    let calls = sink.calls.load(Ordering::Relaxed);
    assert!(calls <= 1 + 2 * 2 * 4, "{calls} statements for 2 bad rows of 16");
}

#[tokio::test(start_paused = true)]
async fn a_record_that_cannot_be_dead_lettered_stops_the_pipeline_without_acknowledging() {
    let source = VecSource::with(4);
    let buffer = Arc::new(MemBuffer::default());
    let sink = Arc::new(MemSink { refuse: [2].into(), no_dead_letter: true, ..MemSink::default() });
    let p = pipeline(&source, &buffer, &sink, 4, Duration::from_secs(3600));
    let err = run_until(p, "the pipeline stopping by itself", |_| false).await.expect_err("must stop");
    assert!(matches!(err, PipelineError::Undeliverable { offset: 2, .. }), "{err}");
    assert!(source.acked().is_empty(), "nothing of the failed batch is acknowledged");
    assert_eq!(buffer.map.lock().expect("lock").len(), 4, "the write-ahead copies stay for the next start");
}

/// Runs a pipeline (batches of `max_rows`) over `source` into a sink refusing every write
/// with `refusing` set, until the sink has refused `attempts` of them; then checks, while it
/// refuses, that the sink holds the dead letters `dead` and no other, and that `/readyz` names
/// a statement fault with `error`; then lets the sink take records again, and runs until every
/// record is delivered and the pipeline is ready again.
async fn refused_for_a_while(
    source: &VecSource,
    sink: &Arc<MemSink>,
    refusing: fn(&MemSink) -> &AtomicBool,
    (max_rows, attempts): (usize, usize),
    dead: &'static [i64],
    error: &'static str,
) -> Stopped {
    let buffer = Arc::new(MemBuffer::default());
    let p = pipeline(source, &buffer, sink, max_rows, Duration::from_secs(3600));
    let readiness = p.readiness();
    let total = source.queue.lock().expect("lock").len() as u64;
    let s2 = Arc::clone(sink);
    let stopped = run_until(p, "every record delivered once the sink takes them again", move |s| {
        let refused = s2.refused_whole.lock().expect("lock").len();
        if refusing(&s2).load(Ordering::Relaxed) && refused >= attempts {
            let expected: BTreeSet<i64> = dead.iter().copied().collect();
            assert_eq!(s2.dead(), expected, "dead letters while the statement is refused");
            let not_ready = readiness.check().expect_err("not ready while every record is refused");
            assert!(
                not_ready
                    .iter()
                    .any(|l| l.starts_with(&format!("mysql: statement or schema fault ({error})"))),
                "{not_ready:?}"
            );
            assert!(!not_ready.iter().any(|l| l.contains("mysql: failing")), "{not_ready:?}");
            refusing(&s2).store(false, Ordering::Relaxed);
        }
        let done = s.delivered() == total;
        if done {
            assert_eq!(readiness.check(), Ok(()), "ready again once the sink takes the statement");
        }
        done
    })
    .await
    .expect("runs");
    assert!(buffer.map.lock().expect("lock").is_empty(), "every write-ahead copy deleted once delivered");
    stopped
}

#[tokio::test(start_paused = true)]
async fn a_statement_fault_is_retried_whole_never_dead_lettered_and_not_ready_while_it_lasts() {
    let source = VecSource::with(20);
    let sink = Arc::new(MemSink { statement_fault: AtomicBool::new(true), ..MemSink::default() });
    let stopped = refused_for_a_while(
        &source,
        &sink,
        |s| &s.statement_fault,
        (10, 5),
        &[],
        "error 1054, SQLSTATE 42S22",
    )
    .await;
    let stats = stopped.summary.stats;
    assert_eq!((stats.inserted, stats.dead_lettered), (20, 0));
    assert!(sink.dead().is_empty(), "nothing dead-lettered");
    assert!(stats.statement_faults >= 5 && stats.retries >= stats.statement_faults, "{stats:?}");
    let refused = sink.refused_whole.lock().expect("lock").clone();
    assert!(refused.iter().all(|n| *n == 10), "the batch is retried whole, never halved: {refused:?}");
    assert_eq!(source.acked(), (0..20).collect());
    assert_eq!(*sink.rows.lock().expect("lock"), (0..20).collect());
}

#[tokio::test(start_paused = true)]
async fn a_presumed_data_fault_of_the_batch_s_first_two_records_alike_is_taken_for_a_statement_fault() {
    let source = VecSource::with(8);
    let sink = Arc::new(MemSink { refuse_all_presumed: AtomicBool::new(true), ..MemSink::default() });
    let stopped = refused_for_a_while(
        &source,
        &sink,
        |s| &s.refuse_all_presumed,
        (8, 8),
        &[0],
        "error 1999, SQLSTATE 23999",
    )
    .await;
    let stats = stopped.summary.stats;
    // The first record was refused alone before the second could show the refusal is everyone's.
    assert_eq!(sink.dead(), [0].into(), "only the batch's first record is dead-lettered");
    assert_eq!((stats.inserted, stats.dead_lettered), (7, 1));
    assert!(stats.statement_faults >= 1, "{stats:?}");
    let refused = sink.refused_whole.lock().expect("lock").clone();
    // Halved down to records 0 and 1 (8, 4, 2, 1, 1); then record 1 is retried alone.
    assert_eq!(refused[..5], [8, 4, 2, 1, 1], "{refused:?}");
    assert!(refused[5..].iter().all(|n| *n == 1), "record 1 retried, not dead-lettered: {refused:?}");
    assert_eq!(source.acked(), (0..8).collect());
}

#[tokio::test(start_paused = true)]
async fn a_presumed_data_fault_of_one_record_is_dead_lettered() {
    let source = VecSource::with(8);
    let buffer = Arc::new(MemBuffer::default());
    // The batch's first record: refused alone exactly as the whole batch was, but record 1 is
    // stored, so the refusal is record 0's.
    let sink = Arc::new(MemSink { refuse: [0, 5].into(), presumed: true, ..MemSink::default() });
    let p = pipeline(&source, &buffer, &sink, 8, Duration::from_secs(3600));
    let stopped = run_until(p, "the batch delivered", |s| s.batches == 1).await.expect("runs");
    assert_eq!(sink.dead(), [0, 5].into());
    assert_eq!((stopped.summary.stats.inserted, stopped.summary.stats.statement_faults), (6, 0));
    assert_eq!(source.acked(), (0..8).collect());
}

#[tokio::test(start_paused = true)]
async fn a_known_data_fault_is_dead_lettered_even_when_every_record_has_it() {
    let source = VecSource::with(4);
    let buffer = Arc::new(MemBuffer::default());
    let sink = Arc::new(MemSink { refuse: (0..4).collect(), ..MemSink::default() });
    let p = pipeline(&source, &buffer, &sink, 4, Duration::from_secs(3600));
    let stopped = run_until(p, "the batch delivered", |s| s.batches == 1).await.expect("runs");
    assert_eq!(sink.dead(), (0..4).collect(), "a value refused by its code is the row's, every time");
    assert_eq!(stopped.summary.stats.statement_faults, 0);
}

/// Batches of 10, at most 100 records held: 10 being written, 10 collected, 80 spilled.
fn spilling_pipeline(source: &VecSource, buffer: &Arc<MemBuffer>, sink: &Arc<MemSink>) -> Pipeline {
    Pipeline::new(
        Box::new(source.clone()),
        Arc::clone(buffer) as Arc<dyn Buffer>,
        Arc::clone(sink) as Arc<dyn Sink>,
        PipelineOptions::new()
            .buffer(BatchingConfig {
                max_rows: 10,
                flush_interval: Duration::from_secs(3600),
                max_buffered_rows: Some(100),
                ..BatchingConfig::default()
            })
            .retry(retry())
            .shutdown_timeout(Duration::from_secs(5)),
    )
    .expect("valid options")
}

#[tokio::test(start_paused = true)]
async fn while_the_sink_is_down_full_batches_spill_to_the_buffer_up_to_the_limit_then_drain_in_order() {
    let source = VecSource::with(500);
    let buffer = Arc::new(MemBuffer::default());
    let sink = Arc::new(MemSink { down: AtomicBool::new(true), ..MemSink::default() });
    let p = spilling_pipeline(&source, &buffer, &sink);
    let peak_spilled = Arc::new(AtomicU64::new(0));
    // Most records in memory while the sink was down, and after it came back.
    let peak_memory = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    // Records consumed when the limit was reached, and after waiting there.
    let consumed_at_limit = Arc::new(Mutex::new(None::<(u64, u64)>));
    let (peak, at_limit, s2) = (Arc::clone(&peak_spilled), Arc::clone(&consumed_at_limit), Arc::clone(&sink));
    let memory = Arc::clone(&peak_memory);
    let mut reached: Option<(tokio::time::Instant, u64)> = None;
    let stopped = run_until(p, "all 500 records written once the sink is back", move |s| {
        peak.fetch_max(s.spilled, Ordering::Relaxed);
        memory[usize::from(!s2.down.load(Ordering::Relaxed))].fetch_max(s.memory_buffered, Ordering::Relaxed);
        if s2.down.load(Ordering::Relaxed) {
            match reached {
                // 10 being retried + 10 handed over before the sink failed (waiting for its
                // turn) + 70 spilled = 90. Memory is full (two batches), and spilling another
                // batch would leave no room for a new one under the limit of 100.
                None if s.spilled == 70 => reached = Some((tokio::time::Instant::now(), s.consumed)),
                // Stay at the limit a while to show the loop takes nothing more, then recover.
                Some((since, consumed)) if since.elapsed() >= Duration::from_millis(600) => {
                    *at_limit.lock().expect("lock") = Some((consumed, s.consumed));
                    s2.down.store(false, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        s.inserted == 500
    })
    .await
    .expect("runs");
    assert_eq!(peak_spilled.load(Ordering::Relaxed), 70, "spilled up to the limit, never past it");
    // Two batches, and a third while it fills to be spilled; once the sink is back, spilled
    // batches read back count too, and the bound is two batches again.
    assert!(peak_memory[0].load(Ordering::Relaxed) <= 30, "{:?} while down", peak_memory[0]);
    assert!(peak_memory[1].load(Ordering::Relaxed) <= 20, "{:?} once back", peak_memory[1]);
    let consumed =
        consumed_at_limit.lock().expect("lock").take().expect("the limit is reached while the sink is down");
    assert_eq!(consumed, (90, 90), "at the limit of records held, consumption stops");
    assert_eq!(stopped.summary.stats.inserted, 500);
    assert_eq!(stopped.summary.stats.spilled, 0);
    let order: Vec<i64> = sink.written().into_iter().flat_map(|w| w.offsets).collect();
    for partition in 0..2 {
        let offsets: Vec<i64> = order.iter().copied().filter(|o| o % 2 == partition).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "partition {partition} written in offset order");
    }
    assert_eq!(source.acked(), (0..500).collect());
    assert!(buffer.map.lock().expect("lock").is_empty(), "every spilled copy deleted once delivered");
}

#[tokio::test(start_paused = true)]
async fn spilled_records_missing_from_the_buffer_stop_the_pipeline_before_anything_later_is_written() {
    let source = VecSource::with(60);
    let buffer = Arc::new(MemBuffer::default());
    let sink = Arc::new(MemSink { down: AtomicBool::new(true), ..MemSink::default() });
    let p = spilling_pipeline(&source, &buffer, &sink);
    let (b2, s2) = (Arc::clone(&buffer), Arc::clone(&sink));
    let err = run_until(p, "the pipeline stopping by itself", move |s| {
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
    // The first batch was being written and the second handed over when the sink failed;
    // everything after them was spilled.
    assert!(written.iter().all(|o| *o < 20), "only the batches that were in memory are written: {written:?}");
    assert!(source.acked().iter().all(|o| *o < 20), "nothing after the lost records is acknowledged");
}

/// What [`RandomSource`] handed out and got back.
#[derive(Debug, Default)]
struct SourceLog {
    handed: usize,
    /// Acknowledged records, `(partition, offset)`, in order.
    acked: Vec<(i32, i64)>,
    /// Most records handed out and not acknowledged yet, right after a poll: what the runtime
    /// holds in memory then (the property test turns spilling off).
    peak_held: usize,
}

/// Hands out its records in order, each poll a random number of them up to the `max` asked for
/// (exactly `max` on some polls), after a random delay.
struct RandomSource {
    queue: VecDeque<Record>,
    /// Per poll, cycled: the share of `max` to return (`None`: all of it) and a delay in ms.
    plan: Vec<(Option<f64>, u64)>,
    polls: usize,
    log: Arc<Mutex<SourceLog>>,
}

#[async_trait]
impl Source for RandomSource {
    async fn poll(&mut self, max: usize) -> Result<Vec<Record>, SourceError> {
        if self.queue.is_empty() {
            std::future::pending::<()>().await;
        }
        let (share, delay_ms) = self.plan[self.polls % self.plan.len()];
        self.polls += 1;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        // Taken only after the last await: a cancelled poll loses nothing.
        let want = share.map_or(max, |f| 1 + (f * max as f64) as usize);
        let records: Vec<Record> = self.queue.drain(..want.min(self.queue.len())).collect();
        let mut log = self.log.lock().expect("lock");
        log.handed += records.len();
        log.peak_held = log.peak_held.max(log.handed.saturating_sub(log.acked.len()));
        Ok(records)
    }
    fn acknowledge(&mut self, delivered: &[Record]) -> Result<(), SourceError> {
        self.log.lock().expect("lock").acked.extend(delivered.iter().map(|r| (r.partition, r.offset)));
        Ok(())
    }
}

/// Stores offsets per partition. Each call, by its cycled plan, takes a while and may fail
/// transiently; it records the largest batch it was ever given, stored or not.
#[derive(Default)]
struct RandomSink {
    /// Per call, cycled: a delay in ms and whether to fail transiently.
    plan: Vec<(u64, bool)>,
    calls: AtomicUsize,
    largest: AtomicUsize,
    stored: Mutex<BTreeMap<i32, Vec<i64>>>,
}

#[async_trait]
impl Sink for RandomSink {
    async fn write_batch(&self, records: &[Record]) -> Result<BatchOutcome, SinkError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        self.largest.fetch_max(records.len(), Ordering::Relaxed);
        let (delay_ms, fail) = self.plan[call % self.plan.len()];
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if fail {
            return Err(SinkError::transient("connection reset"));
        }
        let mut stored = self.stored.lock().expect("lock");
        for r in records {
            stored.entry(r.partition).or_default().push(r.offset);
        }
        Ok(BatchOutcome { inserted: records.len(), ..BatchOutcome::default() })
    }
}

#[test]
fn dead_letters_are_counted_in_metrics_by_class_whoever_made_them() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let stats = metrics::with_local_recorder(&recorder, || {
        paused_runtime().block_on(async {
            let source = VecSource::with(16);
            let buffer = Arc::new(MemBuffer::default());
            // 3 refused alone (the runtime dead-letters it), 5, 6 and 9 dead-lettered by the
            // sink within its batch, as a custom sink may.
            let sink =
                Arc::new(MemSink { refuse: [3].into(), in_batch: [5, 6, 9].into(), ..MemSink::default() });
            let p = pipeline(&source, &buffer, &sink, 16, Duration::from_secs(3600));
            run_until(p, "the batch delivered", |s| s.batches == 1).await.expect("runs").summary.stats
        })
    });
    assert_eq!((stats.inserted, stats.dead_lettered), (12, 4));
    let mut counted = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if key.key().name() != m::DEAD_LETTERED {
            continue;
        }
        let class = key.key().labels().find(|l| l.key() == "class").map(|l| l.value().to_owned());
        if let metrics_util::debugging::DebugValue::Counter(n) = value {
            counted.insert(class.unwrap_or_default(), n);
        }
    }
    let expected: BTreeMap<String, u64> =
        [("sink_rejected", 1), ("odd_shape", 2), ("unclassified", 1)].map(|(c, n)| (c.to_owned(), n)).into();
    assert_eq!(counted, expected);
}

/// A runtime for one property-test case, on paused time like the `#[tokio::test]`s.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("a runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// However many records each poll returns (up to the `max` asked for), and however the sink
    /// is slow or fails: no batch exceeds `max_rows`, memory holds at most two batches, and every
    /// record is written exactly once, in offset order within its partition.
    #[test]
    fn any_poll_sizes_keep_batches_within_max_rows_memory_within_two_batches_and_partitions_in_order(
        max_rows in 1usize..16,
        partitions in proptest::collection::vec(0i32..3, 0..150),
        polls in proptest::collection::vec((proptest::option::weighted(0.7, 0.0..1.0f64), 0u64..5), 1..20),
        mut writes in proptest::collection::vec((0u64..10, proptest::bool::weighted(0.2)), 1..20),
        interval_ms in 1u64..100,
    ) {
        // Some call in every cycle of the plan succeeds.
        writes[0].1 = false;
        let mut next = BTreeMap::<i32, i64>::new();
        let records: VecDeque<Record> = partitions
            .iter()
            .map(|&p| {
                let offset = next.entry(p).or_default();
                *offset += 1;
                Record::new("t", p, *offset - 1, Some(vec![b'x'; 8]))
            })
            .collect();
        let total = records.len();
        let log = Arc::new(Mutex::new(SourceLog::default()));
        let source = RandomSource { queue: records, plan: polls, polls: 0, log: Arc::clone(&log) };
        let sink = Arc::new(RandomSink { plan: writes, ..RandomSink::default() });
        let p = Pipeline::new(
            Box::new(source),
            Arc::new(MemBuffer::default()),
            Arc::clone(&sink) as Arc<dyn Sink>,
            PipelineOptions::new().buffer(BatchingConfig {
                max_rows,
                flush_interval: Duration::from_millis(interval_ms),
                // Two batches: no spilling, memory is all there is.
                max_buffered_rows: Some(2 * max_rows),
                ..BatchingConfig::default()
            }).retry(retry()).shutdown_timeout(Duration::from_secs(5)),
        )
        .expect("valid options");
        let peak_memory = Arc::new(AtomicU64::new(0));
        let peak = Arc::clone(&peak_memory);
        let ran = paused_runtime().block_on(run_until(p, "every record written", move |s| {
            peak.fetch_max(s.memory_buffered, Ordering::Relaxed);
            s.inserted == total as u64
        }));
        prop_assert!(ran.is_ok(), "the run failed: {:?}", ran.err());

        let largest = sink.largest.load(Ordering::Relaxed);
        prop_assert!(largest <= max_rows, "the sink was given a batch of {} records, max_rows {}", largest, max_rows);
        let log = log.lock().expect("lock");
        prop_assert!(
            log.peak_held <= 2 * max_rows,
            "{} records held after a poll, more than two batches of {}", log.peak_held, max_rows
        );
        let memory = peak_memory.load(Ordering::Relaxed);
        prop_assert!(memory <= 2 * max_rows as u64, "memory_buffered reached {}, max_rows {}", memory, max_rows);
        let all: BTreeMap<i32, Vec<i64>> = next.iter().map(|(p, n)| (*p, (0..*n).collect())).collect();
        let stored = sink.stored.lock().expect("lock").clone();
        prop_assert_eq!(stored, all.clone(), "every record stored once, in offset order per partition");
        let mut acked = log.acked.clone();
        acked.sort_unstable();
        let expected: Vec<(i32, i64)> = all.iter().flat_map(|(p, o)| o.iter().map(move |o| (*p, *o))).collect();
        prop_assert_eq!(acked, expected, "every record acknowledged once");
    }
}

/// Drops every record whose offset is a multiple of three.
#[derive(Debug)]
struct EveryThird;

impl crate::RecordFilter for EveryThird {
    fn drop_reason(&self, record: &Record) -> Option<&str> {
        (record.offset % 3 == 0).then_some("third")
    }
}

#[tokio::test(start_paused = true)]
async fn filtered_records_are_acknowledged_but_never_written_ahead_or_stored() {
    let source = VecSource::with(30);
    let (buffer, sink) = (Arc::new(MemBuffer::default()), Arc::new(MemSink::default()));
    let p = Pipeline::new(
        Box::new(source.clone()),
        Arc::clone(&buffer) as Arc<dyn Buffer>,
        Arc::clone(&sink) as Arc<dyn Sink>,
        PipelineOptions::new()
            .buffer(BatchingConfig { max_rows: 10, ..BatchingConfig::default() })
            .retry(retry())
            .filter(Arc::new(EveryThird)),
    )
    .expect("valid options");
    let stopped = run_until(p, "every record done with", |s| s.delivered() == 30).await.expect("runs");
    let kept: BTreeSet<i64> = (0..30).filter(|o| o % 3 != 0).collect();
    assert_eq!(*sink.rows.lock().expect("lock"), kept, "exactly the kept records are stored");
    assert_eq!(buffer.next.load(Ordering::Relaxed), kept.len(), "dropped records are never written ahead");
    assert_eq!(source.acked(), (0..30).collect(), "dropped records are acknowledged too");
    let stats = stopped.summary.stats;
    assert_eq!((stats.consumed, stats.filtered, stats.inserted), (30, 10, 20));
}

#[tokio::test(start_paused = true)]
async fn a_pause_finishes_the_batches_in_flight_then_consumes_and_writes_nothing_until_resumed() {
    let source = VecSource::with(35);
    let (buffer, sink) = (Arc::new(MemBuffer::default()), Arc::new(MemSink::default()));
    // The sink is down: the first full batch stays in flight, retried; the next one is handed
    // over behind it, waiting for its turn (no spilling: memory holds these two, and polling
    // stops).
    sink.down.store(true, Ordering::Relaxed);
    let batching = BatchingConfig {
        max_rows: 10,
        flush_interval: Duration::from_secs(3600),
        max_buffered_rows: Some(20),
        ..BatchingConfig::default()
    };
    let p = Pipeline::new(
        Box::new(source.clone()),
        Arc::clone(&buffer) as Arc<dyn Buffer>,
        Arc::clone(&sink) as Arc<dyn Sink>,
        PipelineOptions::new().buffer(batching).retry(retry()),
    )
    .expect("valid options");
    let control = p.pause_control();
    let readiness = p.readiness();
    let stats = p.stats();
    let sink2 = Arc::clone(&sink);
    let source2 = source.clone();
    let summary = p
        .run(async move {
            // One batch in flight (retried), the next one handed over.
            while sink2.calls.load(Ordering::Relaxed) == 0 || stats.snapshot().consumed < 20 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(control.pause());
            let problems = readiness.check().expect_err("a paused pipeline is not ready");
            assert!(problems.iter().any(|p| p.contains("paused")), "{problems:?}");
            // The batches in flight finish once the sink is back.
            let polled = source2.polls().len();
            sink2.down.store(false, Ordering::Relaxed);
            while sink2.written().len() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Nothing more is written, nothing more is polled, though memory has room again.
            tokio::time::sleep(Duration::from_secs(120)).await;
            assert_eq!(sink2.sizes(), vec![10, 10], "only the batches in flight were written while paused");
            assert_eq!(source2.polls().len(), polled, "nothing is consumed while paused");
            assert!(control.resume());
            let resumed = tokio::time::Instant::now();
            while sink2.rows.lock().expect("lock").len() < 30 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                resumed.elapsed() < Duration::from_secs(1),
                "consumption goes on at once on resume, and a full batch is written, not held to the interval"
            );
            // The last five are collected, and written by the drain.
            while stats.snapshot().consumed < 35 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(readiness.check().is_ok(), "ready again once resumed");
        })
        .await
        .expect("runs");
    assert_eq!(summary.stats.inserted, 35);
    assert_eq!(source.acked(), (0..35).collect());
}

/// A buffer whose lease offers one orphan of three records, once.
#[derive(Default)]
struct OrphanOffering {
    inner: MemBuffer,
    offered: AtomicBool,
}

#[async_trait]
impl Buffer for OrphanOffering {
    async fn append(&self, records: &[Record]) -> Result<Vec<BufferKey>, BufferError> {
        self.inner.append(records).await
    }
    async fn remove(&self, keys: &[BufferKey]) -> Result<(), BufferError> {
        self.inner.remove(keys).await
    }
    async fn restore(&self) -> Result<Vec<(BufferKey, Record)>, BufferError> {
        self.inner.restore().await
    }
    fn leases(&self) -> Option<&dyn dp_core::Leases> {
        Some(self)
    }
}

#[async_trait]
impl dp_core::Leases for OrphanOffering {
    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(100)
    }
    async fn heartbeat(&self) -> Result<(), BufferError> {
        Ok(())
    }
    async fn claim_orphan(&self) -> Result<Option<dp_core::Orphan>, BufferError> {
        if self.offered.swap(true, Ordering::SeqCst) {
            return Ok(None);
        }
        let records = (100..103).map(|o| (BufferKey(format!("orphan-{o}")), rec(o))).collect();
        Ok(Some(dp_core::Orphan { instance: "dead".into(), records }))
    }
    async fn release_orphan(&self, _: &str) -> Result<(), BufferError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_paused_pipeline_adopts_no_orphan_until_resumed() {
    let source = VecSource::default();
    let buffer = Arc::new(OrphanOffering::default());
    let sink = Arc::new(MemSink::default());
    let p = Pipeline::new(
        Box::new(source.clone()),
        Arc::clone(&buffer) as Arc<dyn Buffer>,
        Arc::clone(&sink) as Arc<dyn Sink>,
        PipelineOptions::new().retry(retry()),
    )
    .expect("valid options");
    let control = p.pause_control();
    assert!(control.pause(), "paused before it runs");
    let (sink2, buffer2) = (Arc::clone(&sink), Arc::clone(&buffer));
    let summary = p
        .run(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(!buffer2.offered.load(Ordering::SeqCst), "no orphan is claimed while paused");
            assert!(sink2.written().is_empty(), "nothing is written while paused");
            assert!(control.resume());
            while sink2.rows.lock().expect("lock").len() < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("runs");
    assert_eq!(summary.stats.adopted, 3);
}

#[tokio::test(start_paused = true)]
async fn a_paused_pipeline_with_room_and_a_due_interval_polls_and_writes_nothing() {
    let source = VecSource::with(5);
    let (buffer, sink) = (Arc::new(MemBuffer::default()), Arc::new(MemSink::default()));
    let p = pipeline(&source, &buffer, &sink, 10, Duration::from_secs(10));
    let control = p.pause_control();
    let stats = p.stats();
    let (source2, sink2) = (source.clone(), Arc::clone(&sink));
    let summary = p
        .run(async move {
            while stats.snapshot().consumed < 5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(control.pause());
            source2.queue.lock().expect("lock").extend((5..8).map(rec));
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert_eq!(stats.snapshot().consumed, 5, "room for more, but nothing is polled while paused");
            assert!(
                sink2.written().is_empty(),
                "past the flush interval, but nothing is written while paused"
            );
            assert!(control.resume());
            while stats.snapshot().consumed < 8 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("runs");
    assert_eq!(summary.stats.inserted, 8, "the drain writes what was collected");
}
