//! The flush loop: consume, write ahead, batch, deliver, acknowledge.
//!
//! ```text
//!  Source::poll ──► Buffer::append (one MSET per chunk) ──► Accumulator (≤ max_rows)
//!                                                                │ size or interval
//!                                                                ▼
//!  Source::acknowledge ◄── Buffer::remove (UNLINK) ◄── Sink::write_batch (one transaction)
//! ```
//!
//! One batch is written while the next one is collected, so consumption goes on during a
//! flush; when the next batch is full before the previous one is written, polling waits. The
//! instance therefore holds at most `2 × max_rows` records in memory.
//!
//! A batch is acknowledged to the source only after the sink returned `Ok` for every record in
//! it, and only then are its write-ahead keys deleted: a crash at any point leaves every record
//! either in the sink, or in the buffer, or uncommitted in the source — usually two of these.
//! Transient sink errors (outages) are retried with exponential backoff and full jitter; a
//! permanent error (a data fault) splits the batch in halves until the refused records are
//! isolated, which are then dead-lettered one by one. A statement or schema fault — the sink
//! refuses the statement itself, so every record would fail alike — is retried like an outage
//! and never dead-lettered; while it lasts the readiness probe says so, a metric counts it, and
//! each attempt logs the error. A refusal the sink only presumed to be about the data is taken
//! for a statement fault when the batch's first two records each fail alone exactly as the
//! whole batch did (see [`Isolation`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use dp_core::{
    Accumulator, Batch, BatchOutcome, Buffer, BufferError, BufferKey, DeadLetter, FlushTrigger, Record, Sink,
    SinkError, Source,
};
use tokio::task::JoinHandle;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{BufferConfig, CommitPolicy, RetryConfig};
use crate::metrics as m;
use crate::spill::{Spill, Spilled};
use crate::stats::{PipelineStats, StatsSnapshot};
use crate::write_ahead::WriteAhead;

/// Why a pipeline stopped other than by a clean shutdown. Nothing is lost in any of these
/// cases: undelivered records are still in the buffer and uncommitted in the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// Reading the write-ahead buffer at startup failed.
    #[error("restoring buffered records failed: {0}")]
    Restore(#[source] BufferError),
    /// The sink kept failing transiently for longer than `retry.max_retries` allows.
    #[error("sink still failing after {attempts} attempts: {source}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        source: SinkError,
    },
    /// The sink refused a record and could not dead-letter it either.
    #[error("record {topic}/{partition}@{offset} can be neither stored nor dead-lettered: {source}")]
    Undeliverable {
        /// Topic of the record.
        topic: String,
        /// Partition of the record.
        partition: i32,
        /// Offset of the record.
        offset: i64,
        /// The dead-letter error.
        source: SinkError,
    },
    /// Draining at shutdown took longer than `shutdown_timeout`.
    #[error(
        "shutdown did not finish within {0:?}; undelivered records stay in the buffer for the next start"
    )]
    ShutdownTimeout(Duration),
    /// The source failed in a way retrying cannot fix. What it handed out is drained first.
    #[error("source failed: {0}")]
    Source(#[source] dp_core::SourceError),
    /// Records held only in the write-ahead buffer while the sink was failing are gone from it
    /// (a buffer restarted without persistence, or evicting keys). Nothing after them is
    /// written, so no watermark passes them: under `after_sink` Kafka still has them, and the
    /// next start reads them again.
    #[error(
        "{missing} of {total} records held in the write-ahead buffer only are gone from it (restarted without persistence, or evicting keys?); stopping without writing anything after them, so the next start reads them from Kafka again"
    )]
    BufferLost {
        /// Records whose keys were missing.
        missing: usize,
        /// Records of the batch read back.
        total: usize,
    },
    /// Reading spilled records back failed permanently.
    #[error("reading records back from the write-ahead buffer failed: {0}")]
    Fetch(#[source] BufferError),
    /// A flush task panicked or was cancelled.
    #[error("flush task failed: {0}")]
    Task(String),
}

/// What a finished run did.
#[derive(Debug, Clone, Copy)]
pub struct RunSummary {
    /// Final counters.
    pub stats: StatsSnapshot,
    /// Wall time of the run, restore included.
    pub elapsed: Duration,
}

/// A pipeline ready to run: a source, a write-ahead buffer and a sink.
pub struct Pipeline {
    source: Box<dyn Source>,
    deliverer: Arc<Deliverer>,
    buffer_config: BufferConfig,
    shutdown_timeout: Duration,
    commit_policy: CommitPolicy,
    kafka_health: Option<dp_source_kafka::KafkaHealth>,
}

impl Pipeline {
    /// Wires the parts together. Nothing runs until [`Pipeline::run`].
    pub fn new(
        source: Box<dyn Source>,
        buffer: Arc<dyn Buffer>,
        sink: Arc<dyn Sink>,
        buffer_config: BufferConfig,
        retry: RetryConfig,
        shutdown_timeout: Duration,
    ) -> Self {
        let deliverer = Arc::new(Deliverer {
            sink,
            buffer,
            retry,
            stats: Arc::default(),
            buffer_healthy: Arc::new(AtomicBool::new(true)),
            leftover_keys: Mutex::default(),
        });
        Self {
            source,
            deliverer,
            buffer_config,
            shutdown_timeout,
            commit_policy: CommitPolicy::AfterSink,
            kafka_health: None,
        }
    }

    /// When Kafka offsets may advance; [`CommitPolicy::AfterSink`] unless set.
    pub fn with_commit_policy(mut self, policy: CommitPolicy) -> Self {
        self.commit_policy = policy;
        self
    }

    /// Lets [`Pipeline::readiness`] report the Kafka consumer's health too.
    pub fn with_kafka_health(mut self, health: dp_source_kafka::KafkaHealth) -> Self {
        self.kafka_health = Some(health);
        self
    }

    /// A handle for readiness probes, to read while the pipeline runs.
    pub fn readiness(&self) -> crate::Readiness {
        crate::Readiness { stats: Arc::clone(&self.deliverer.stats), kafka: self.kafka_health.clone() }
    }

    /// Live counters, to read while the pipeline runs.
    pub fn stats(&self) -> Arc<PipelineStats> {
        Arc::clone(&self.deliverer.stats)
    }

    /// Restores what an earlier run left in the buffer, then consumes until `shutdown`
    /// completes, then drains: writes what is buffered, commits, and closes every part.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<RunSummary, PipelineError> {
        let started = Instant::now();
        let Self { mut source, deliverer, buffer_config, shutdown_timeout, commit_policy, kafka_health: _ } =
            self;
        let stats = Arc::clone(&deliverer.stats);
        // The lease must stay alive through a long restore, or another instance adopts us.
        let background = AbortOnDrop(leases(&deliverer, buffer_config.max_rows));
        restore(&deliverer, buffer_config.max_rows).await?;
        PipelineStats::set(&stats.consuming, m::CONSUMING, 1);
        let mut write_ahead = WriteAhead::new(
            Arc::clone(&deliverer.buffer),
            Arc::clone(&stats),
            Arc::clone(&deliverer.buffer_healthy),
        );

        let mut acc = Accumulator::new(buffer_config.max_rows, buffer_config.flush_interval);
        let mut spill = Spill::new(&buffer_config, deliverer.buffer.can_fetch());
        let mut in_flight: Option<(JoinHandle<Result<Delivered, PipelineError>>, Held)> = None;
        // Set when partitions were revoked: flush everything buffered as soon as possible.
        let mut flush_now = false;
        // After a failed poll: when the source may be polled again.
        let mut poll_again: Option<tokio::time::Instant> = None;
        let mut failed: Option<PipelineError> = None;
        tokio::pin!(shutdown);
        loop {
            if in_flight.is_none() {
                // Spilled batches are older than anything collected: they go first.
                if let Some(spilled) = spill.pop() {
                    in_flight = Some(start_spilled(&deliverer, spilled));
                } else if flush_now {
                    flush_now = false;
                    if !acc.is_empty() {
                        in_flight = Some(start(&deliverer, &mut acc, FlushTrigger::Rebalance));
                    }
                }
            }
            let flying = in_flight.as_ref().map_or(Held::default(), |f| f.1);
            let failing = stats.sink_failing.load(Ordering::Relaxed) > 0;
            spill.offer(&mut acc, (flying.records, flying.bytes), failing);
            let (flying_records, flying_bytes) = flying.in_memory();
            PipelineStats::set(&stats.memory_buffered, m::BUFFERED, acc.len() + flying_records);
            PipelineStats::set(&stats.spilled, m::SPILLED, spill.rows());
            m::set(m::BUFFERED_BYTES, acc.bytes() + flying_bytes);
            m::set(m::REDIS_BUFFERED, acc.keys() + flying.keys + spill.rows());
            let deadline = acc.deadline().map(tokio::time::Instant::from_std);
            // While a batch is retried and memory is full, look again now and then whether the
            // collected batch can be spilled (the sink's state changes inside the flush task).
            let stuck = in_flight.is_some() && acc.room() == 0;
            let source_resting = poll_again.is_some();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                done = join(&mut in_flight) => {
                    in_flight = None;
                    complete(source.as_mut(), &mut write_ahead, done?);
                    if spill.is_empty() && let Some(trigger) = acc.due(now()) {
                        in_flight = Some(start(&deliverer, &mut acc, trigger));
                    }
                }
                () = tokio::time::sleep(SPILL_CHECK), if stuck => {}
                () = sleep_until(deadline), if deadline.is_some() && in_flight.is_none() => {
                    in_flight = Some(start(&deliverer, &mut acc, FlushTrigger::Interval));
                }
                () = sleep_until(poll_again), if source_resting => poll_again = None,
                polled = source.poll(acc.room()), if acc.room() > 0 && !source_resting => match polled {
                    Ok(records) => {
                        PipelineStats::bump(&stats.consumed, records.len());
                        m::consumed(&records);
                        let appended = write_ahead.append(&records).await;
                        if commit_policy == CommitPolicy::AfterBuffer && appended.all {
                            // In Redis (which must persist writes under this policy): durable enough
                            // for Kafka to move on. Memory-only records wait for the sink.
                            if let Err(e) = source.acknowledge(&records) {
                                tracing::warn!(error = %e, "storing offsets failed; the group may re-read these records");
                            }
                        }
                        acc.extend(records, appended.keys, now());
                        if source.revoked() {
                            tracing::info!(buffered = acc.len(), "partitions revoked: flushing what is buffered now");
                            flush_now = true;
                        } else if in_flight.is_none()
                            && spill.is_empty()
                            && acc.due(now()) == Some(FlushTrigger::Size)
                        {
                            in_flight = Some(start(&deliverer, &mut acc, FlushTrigger::Size));
                        }
                    }
                    Err(e) if !e.is_transient() => {
                        tracing::error!(error = %e, "source failed; draining and stopping");
                        failed = Some(PipelineError::Source(e));
                        break;
                    }
                    Err(e) => {
                        // Polls rest for a second; batches in flight and the interval do not.
                        tracing::warn!(error = %e, "source poll failed; retrying in 1s");
                        poll_again = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                },
            }
        }

        PipelineStats::set(&stats.consuming, m::CONSUMING, 0);
        tracing::info!(buffered = acc.len(), "shutting down: draining buffered records");
        let drain = async {
            if let Some(flight) = in_flight.as_mut() {
                let done = join_handle(&mut flight.0).await;
                in_flight = None;
                complete(source.as_mut(), &mut write_ahead, done?);
            }
            while let Some(spilled) = spill.pop() {
                let done = Arc::clone(&deliverer).deliver_spilled(spilled.keys).await?;
                complete(source.as_mut(), &mut write_ahead, done);
            }
            if !acc.is_empty() {
                let batch = acc.take();
                let done = Arc::clone(&deliverer).deliver(batch, FlushTrigger::Shutdown).await?;
                complete(source.as_mut(), &mut write_ahead, done);
            }
            if let Err(e) = source.commit().await {
                tracing::warn!(error = %e, "final offset commit failed; the group re-reads from the last commit");
            }
            Ok::<(), PipelineError>(())
        };
        let drained = tokio::time::timeout(shutdown_timeout, drain).await;
        if let Some((handle, _)) = in_flight.take() {
            handle.abort();
        }
        drop(background);
        if let Err(e) = source.close().await {
            tracing::warn!(error = %e, "closing the source failed");
        }
        if let Err(e) = deliverer.buffer.close().await {
            tracing::warn!(error = %e, "closing the buffer failed");
        }
        if let Err(e) = deliverer.sink.close().await {
            tracing::warn!(error = %e, "closing the sink failed");
        }
        PipelineStats::set(&stats.memory_buffered, m::BUFFERED, 0);
        PipelineStats::set(&stats.spilled, m::SPILLED, 0);
        m::set(m::BUFFERED_BYTES, 0);
        m::set(m::REDIS_BUFFERED, 0);
        match drained {
            Ok(r) => r?,
            Err(_) => return Err(PipelineError::ShutdownTimeout(shutdown_timeout)),
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(RunSummary { stats: stats.snapshot(), elapsed: started.elapsed() })
    }
}

/// Delivers, before anything is consumed, every record an earlier run left in the buffer.
async fn restore(deliverer: &Arc<Deliverer>, max_rows: usize) -> Result<(), PipelineError> {
    let restored = deliverer.buffer.restore().await.map_err(PipelineError::Restore)?;
    if restored.is_empty() {
        return Ok(());
    }
    tracing::info!(records = restored.len(), "restoring records buffered by an earlier run");
    let mut restored = restored.into_iter().peekable();
    while restored.peek().is_some() {
        let (keys, records): (Vec<_>, Vec<_>) = restored.by_ref().take(max_rows).unzip();
        let n = records.len();
        Arc::clone(deliverer).deliver(Batch { records, keys }, FlushTrigger::Restore).await?;
        PipelineStats::add(&deliverer.stats.restored, m::RESTORED, n);
    }
    Ok(())
}

/// Aborts its tasks when dropped, so no background task outlives `run`, on any path.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts the lease heartbeat and the adoption of orphaned buffers, for a buffer with leases.
fn leases(deliverer: &Arc<Deliverer>, max_rows: usize) -> Vec<JoinHandle<()>> {
    let Some(every) = deliverer.buffer.heartbeat_interval() else { return Vec::new() };
    let heart = Arc::clone(deliverer);
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = heart.buffer.heartbeat().await {
                tracing::warn!(error = %e, "lease renewal failed; another instance may adopt this buffer (harmless: delivery is idempotent)");
            }
        }
    });
    let adopter = Arc::clone(deliverer);
    let adoption = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match adopter.buffer.claim_orphan().await {
                Ok(Some(orphan)) => adopt(&adopter, orphan, max_rows).await,
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "looking for orphaned buffers failed"),
            }
        }
    });
    vec![heartbeat, adoption]
}

/// Delivers an orphan's records (idempotently: the dead instance may have delivered some) and
/// releases the claim. A failure leaves the claim to expire, so the orphan is tried again.
async fn adopt(deliverer: &Arc<Deliverer>, orphan: dp_core::Orphan, max_rows: usize) {
    let dp_core::Orphan { instance, records } = orphan;
    let total = records.len();
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let (keys, batch): (Vec<_>, Vec<_>) = records.by_ref().take(max_rows).unzip();
        let n = batch.len();
        if let Err(e) =
            Arc::clone(deliverer).deliver(Batch { records: batch, keys }, FlushTrigger::Adopt).await
        {
            tracing::error!(orphan = %instance, error = %e, "adopting an orphaned buffer failed; it will be retried");
            return;
        }
        PipelineStats::add(&deliverer.stats.adopted, m::ADOPTED, n);
    }
    match deliverer.buffer.release_orphan(&instance).await {
        Ok(()) => {
            tracing::info!(orphan = %instance, records = total, "adopted and delivered an orphaned buffer")
        }
        Err(e) => tracing::warn!(orphan = %instance, error = %e, "releasing an adopted buffer failed"),
    }
}

/// How often a pipeline whose memory is full and whose flush is being retried checks whether
/// it can spill the collected batch.
const SPILL_CHECK: Duration = Duration::from_millis(250);

/// What a batch being written holds: records, their write-ahead keys, approximate bytes, and
/// whether it is a spilled batch being read back (then none of it is in memory yet).
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    records: usize,
    keys: usize,
    bytes: usize,
    spilled: bool,
}

impl Held {
    /// Records and bytes of this batch held in memory.
    fn in_memory(&self) -> (usize, usize) {
        if self.spilled { (0, 0) } else { (self.records, self.bytes) }
    }
}

fn start(
    deliverer: &Arc<Deliverer>,
    acc: &mut Accumulator,
    trigger: FlushTrigger,
) -> (JoinHandle<Result<Delivered, PipelineError>>, Held) {
    let bytes = acc.bytes();
    let batch = acc.take();
    let held = Held { records: batch.records.len(), keys: batch.keys.len(), bytes, spilled: false };
    (tokio::spawn(Arc::clone(deliverer).deliver(batch, trigger)), held)
}

fn start_spilled(
    deliverer: &Arc<Deliverer>,
    spilled: Spilled,
) -> (JoinHandle<Result<Delivered, PipelineError>>, Held) {
    let n = spilled.keys.len();
    let held = Held { records: n, keys: n, bytes: spilled.bytes, spilled: true };
    (tokio::spawn(Arc::clone(deliverer).deliver_spilled(spilled.keys)), held)
}

fn complete(source: &mut dyn Source, write_ahead: &mut WriteAhead, done: Delivered) {
    let Delivered { batch, outcome, trigger, elapsed } = done;
    write_ahead.delivered(&batch.records);
    tracing::debug!(
        trigger = trigger.as_str(),
        rows = batch.records.len(),
        inserted = outcome.inserted,
        updated = outcome.updated,
        duplicates = outcome.duplicates,
        dead_lettered = outcome.dead_lettered,
        elapsed_ms = elapsed.as_millis() as u64,
        "batch delivered"
    );
    if let Err(e) = source.acknowledge(&batch.records) {
        tracing::warn!(error = %e, "storing offsets failed; the group may re-read these records");
    }
}

async fn join(
    in_flight: &mut Option<(JoinHandle<Result<Delivered, PipelineError>>, Held)>,
) -> Result<Delivered, PipelineError> {
    match in_flight {
        Some((handle, _)) => join_handle(handle).await,
        None => std::future::pending().await,
    }
}

async fn join_handle(
    handle: &mut JoinHandle<Result<Delivered, PipelineError>>,
) -> Result<Delivered, PipelineError> {
    handle.await.map_err(|e| PipelineError::Task(e.to_string()))?
}

/// Now on tokio's clock (which the interval's `sleep_until` runs on), as a `std` instant for the
/// accumulator: one clock for both, also when a test pauses tokio's time.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A batch that reached the sink.
struct Delivered {
    batch: Batch,
    outcome: BatchOutcome,
    trigger: FlushTrigger,
    elapsed: Duration,
}

/// Writes batches: retries, isolation of refused records, write-ahead clean-up.
struct Deliverer {
    sink: Arc<dyn Sink>,
    buffer: Arc<dyn Buffer>,
    retry: RetryConfig,
    stats: Arc<PipelineStats>,
    /// Shared with [`WriteAhead`]: false while the buffer is unreachable.
    buffer_healthy: Arc<AtomicBool>,
    /// Keys of delivered records whose deletion failed; retried with the next deletion.
    leftover_keys: Mutex<Vec<BufferKey>>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Deliverer {
    async fn deliver(
        self: Arc<Self>,
        batch: Batch,
        trigger: FlushTrigger,
    ) -> Result<Delivered, PipelineError> {
        let started = Instant::now();
        let outcome = self.write(&batch.records).await?;
        PipelineStats::add(&self.stats.inserted, m::INSERTED, outcome.inserted);
        PipelineStats::add(&self.stats.updated, m::UPDATED, outcome.updated);
        PipelineStats::add(&self.stats.duplicates, m::DUPLICATES, outcome.duplicates);
        PipelineStats::bump(&self.stats.dead_lettered, outcome.dead_lettered);
        PipelineStats::bump(&self.stats.batches, 1);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        m::delivered(&batch.records, trigger, started.elapsed().as_secs_f64(), now_ms);
        self.remove_keys(&batch.keys).await;
        Ok(Delivered { batch, outcome, trigger, elapsed: started.elapsed() })
    }

    /// Reads a spilled batch back from the buffer (retrying while it is unreachable) and
    /// delivers it.
    async fn deliver_spilled(self: Arc<Self>, keys: Vec<BufferKey>) -> Result<Delivered, PipelineError> {
        let mut schedule = self.backoff();
        let fetched = loop {
            match self.buffer.fetch(&keys).await {
                Ok(fetched) => break fetched,
                Err(e) if e.is_transient() => {
                    let delay =
                        schedule.next().unwrap_or(self.retry.max_backoff).mul_f64(rand::random::<f64>());
                    tracing::warn!(records = keys.len(), delay_ms = delay.as_millis() as u64, error = %e, "reading spilled records back failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(PipelineError::Fetch(e)),
            }
        };
        let total = fetched.len();
        let records: Vec<Record> = fetched.into_iter().flatten().collect();
        if records.len() < keys.len() {
            let missing = keys.len() - records.len();
            tracing::error!(missing, total, "spilled records are gone from the write-ahead buffer");
            return Err(PipelineError::BufferLost { missing, total });
        }
        self.deliver(Batch { records, keys }, FlushTrigger::Spilled).await
    }

    fn backoff(&self) -> backon::ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(self.retry.initial_backoff)
            .with_max_delay(self.retry.max_backoff)
            .with_factor(self.retry.multiplier)
            .without_max_times()
            .build()
    }

    /// Deletes delivered records' write-ahead copies, with any that failed before. While the
    /// buffer is down, keys are kept for later instead of waiting on it; a copy that outlives
    /// its record is harmless (a restore finds it below the watermark and skips it).
    async fn remove_keys(&self, keys: &[BufferKey]) {
        let mut todo: Vec<BufferKey> = match self.leftover_keys.lock() {
            Ok(mut l) => std::mem::take(&mut *l),
            Err(_) => Vec::new(),
        };
        todo.extend_from_slice(keys);
        if todo.is_empty() {
            return;
        }
        let result = if self.buffer_healthy.load(Ordering::Relaxed) {
            self.buffer.remove(&todo).await
        } else {
            Err(BufferError::transient("buffer marked unreachable"))
        };
        if let Err(e) = result {
            PipelineStats::add(&self.stats.buffer_failures, m::BUFFER_FAILURES, 1);
            tracing::warn!(error = %e, keys = todo.len(), "write-ahead delete failed; retrying with the next batch");
            if let Ok(mut l) = self.leftover_keys.lock() {
                l.extend(todo);
            }
        }
    }

    /// Writes the batch `records`; on a permanent error, halves it until the refused records
    /// are isolated and dead-letters them.
    async fn write(&self, records: &[Record]) -> Result<BatchOutcome, PipelineError> {
        let mut isolation = Isolation { len: records.len(), ..Isolation::default() };
        self.isolate(records, &mut isolation).await
    }

    /// Writes `records`, a part of the batch `iso` follows; on a permanent error, halves them
    /// until the refused records are isolated and dead-letters them: O(k log n) statements for
    /// k bad records out of n.
    fn isolate<'a>(
        &'a self,
        records: &'a [Record],
        iso: &'a mut Isolation,
    ) -> BoxFuture<'a, Result<BatchOutcome, PipelineError>> {
        Box::pin(async move {
            let mut err =
                match self.retrying(|| self.sink.write_batch(records), iso.statement.as_ref()).await? {
                    Ok(outcome) => {
                        iso.written = true;
                        return Ok(outcome);
                    }
                    Err(permanent) => permanent,
                };
            let refusal = Refusal::of(&err);
            iso.batch.get_or_insert_with(|| refusal.clone());
            if let [record] = records {
                if iso.is_statement_fault(&err, &refusal) {
                    tracing::error!(topic = &*record.topic, partition = record.partition, offset = record.offset, error = %err, "the batch's first two records are each refused alone exactly as the whole batch was: taking it for a statement or schema fault; the rest of the batch is retried, not dead-lettered");
                    iso.statement = Some(refusal.clone());
                    match self.retrying(|| self.sink.write_batch(records), iso.statement.as_ref()).await? {
                        Ok(outcome) => {
                            iso.written = true;
                            return Ok(outcome);
                        }
                        // Refused differently now: about this record after all.
                        Err(other) => err = other,
                    }
                }
                iso.alone += 1;
                iso.first_alone.get_or_insert(refusal);
                let entry = DeadLetter {
                    record: record.clone(),
                    error_class: "sink_rejected".into(),
                    code: err.code(),
                    sqlstate: err.sqlstate().map(str::to_owned),
                    reason: err.to_string(),
                };
                tracing::warn!(topic = &*record.topic, partition = record.partition, offset = record.offset, error = %err, "record refused by the sink; dead-lettering it");
                return match self
                    .retrying(|| self.sink.dead_letter(std::slice::from_ref(&entry)), None)
                    .await?
                {
                    Ok(()) => {
                        metrics::counter!(m::DEAD_LETTERED, "class" => "sink_rejected").increment(1);
                        Ok(BatchOutcome { dead_lettered: 1, ..BatchOutcome::default() })
                    }
                    Err(source) => Err(PipelineError::Undeliverable {
                        topic: record.topic.to_string(),
                        partition: record.partition,
                        offset: record.offset,
                        source,
                    }),
                };
            }
            tracing::warn!(rows = records.len(), error = %err, "batch refused; splitting it to isolate the bad records");
            let (left, right) = records.split_at(records.len() / 2);
            let mut outcome = self.isolate(left, iso).await?;
            outcome += self.isolate(right, iso).await?;
            Ok(outcome)
        })
    }

    /// Runs `op` until it succeeds or is refused (the inner `Err`: a data fault), backing off
    /// exponentially with full jitter on outages and on statement faults — among them a
    /// presumed data fault equal to `guard`, which [`Isolation`] found to be one.
    async fn retrying<'a, T>(
        &self,
        mut op: impl FnMut() -> BoxFuture<'a, Result<T, SinkError>>,
        guard: Option<&Refusal>,
    ) -> Result<Result<T, SinkError>, PipelineError> {
        let mut schedule = self.backoff();
        let mut attempts = 0u32;
        let mut failing_since: Option<Instant> = None;
        // The sink answered (success or a refusal of the data): it is up.
        let healthy = |failing_since: Option<Instant>| {
            if failing_since.is_some() {
                PipelineStats::set(&self.stats.sink_failing, m::SINK_FAILING, 0);
                self.statement_fault(None);
                m::set(m::OUTAGE_SECONDS, 0);
            }
        };
        loop {
            attempts += 1;
            let e = match op().await {
                Ok(v) => {
                    healthy(failing_since);
                    return Ok(Ok(v));
                }
                Err(e) => e,
            };
            let statement = e.is_statement() || guard.is_some_and(|g| *g == Refusal::of(&e));
            if !statement && !e.is_transient() {
                healthy(failing_since);
                return Ok(Err(e));
            }
            if self.retry.max_retries.is_some_and(|max| attempts > max) {
                return Err(PipelineError::RetriesExhausted { attempts, source: e });
            }
            let since = *failing_since.get_or_insert_with(Instant::now);
            PipelineStats::set(&self.stats.sink_failing, m::SINK_FAILING, 1);
            metrics::gauge!(m::OUTAGE_SECONDS).set(since.elapsed().as_secs_f64());
            let code = match e.code() {
                Some(c) => c.to_string(),
                None if statement => "statement".to_owned(),
                None => "connection".to_owned(),
            };
            metrics::counter!(m::RETRIES, "code" => code.clone()).increment(1);
            let cap = schedule.next().unwrap_or(self.retry.max_backoff);
            let delay = cap.mul_f64(rand::random::<f64>());
            PipelineStats::bump(&self.stats.retries, 1);
            let delay_ms = delay.as_millis() as u64;
            if statement {
                self.statement_fault(Some(&e));
                PipelineStats::bump(&self.stats.statement_faults, 1);
                metrics::counter!(m::STATEMENT_FAULTS, "code" => code).increment(1);
                tracing::error!(attempt = attempts, delay_ms, code = e.code(), sqlstate = e.sqlstate(), error = %e, "the sink refuses the statement for every record (a statement or schema fault, not the data): nothing is dead-lettered; fix the table or the mapping; retrying");
            } else {
                self.statement_fault(None);
                tracing::warn!(attempt = attempts, delay_ms, error = %e, "sink failed transiently; retrying");
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Records whether the batch being retried fails with a statement fault (`Some`), and its
    /// code and SQLSTATE for the readiness probe.
    fn statement_fault(&self, e: Option<&SinkError>) {
        let described = e.map(|e| match (e.code(), e.sqlstate()) {
            (Some(c), Some(s)) => format!(" (error {c}, SQLSTATE {s})"),
            (Some(c), None) => format!(" (error {c})"),
            (None, Some(s)) => format!(" (SQLSTATE {s})"),
            (None, None) => String::new(),
        });
        PipelineStats::set(&self.stats.sink_statement_fault, m::STATEMENT_FAULT, usize::from(e.is_some()));
        if let Ok(mut error) = self.stats.statement_error.lock() {
            *error = described;
        }
    }
}

/// How the isolation of a refused batch's records goes, for the statement-fault guard (rule 5
/// of `docs/specs/delivery.md`).
///
/// A sink that knows its errors never lets a statement fault reach the halving: it reports it
/// as [`ErrorKind::Statement`](dp_core::ErrorKind::Statement) and the batch is retried whole.
/// The guard is a second net for refusals the sink only presumed to be about the data
/// ([`SinkError::is_presumed`]): when the batch's first two records each fail alone with the
/// very refusal of the whole batch (code, SQLSTATE and text) and no part of the batch was
/// written before them, the refusal is the statement's, not the data's. The first record was
/// dead-lettered by then (a record is dead-lettered as soon as it is refused alone, so that a
/// partition's records stay in offset order); the second and everything after it are retried
/// with backoff while the refusal stays the same, as in rule 4. A data fault that the sink
/// knows as such (its code says so) is never second-guessed, even when every record has it.
#[derive(Default)]
struct Isolation {
    /// Records in the whole batch.
    len: usize,
    /// The whole batch's refusal.
    batch: Option<Refusal>,
    /// Records refused alone (and dead-lettered) so far.
    alone: usize,
    /// The first of them's refusal.
    first_alone: Option<Refusal>,
    /// Whether a part of the batch was written: the statement works, so refusals are the data's.
    written: bool,
    /// Set once the guard found a statement fault: refusals equal to it are retried.
    statement: Option<Refusal>,
}

impl Isolation {
    /// Whether `err`, refusing a single record, is a statement fault by the guard's rule.
    fn is_statement_fault(&self, err: &SinkError, refusal: &Refusal) -> bool {
        err.is_presumed()
            && self.len >= 2
            && !self.written
            && self.alone == 1
            && self.batch.as_ref() == Some(refusal)
            && self.first_alone.as_ref() == Some(refusal)
    }
}

/// What tells one refusal from another: the store's code, SQLSTATE and the error's whole text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    code: Option<u32>,
    sqlstate: Option<String>,
    text: String,
}

impl Refusal {
    fn of(e: &SinkError) -> Self {
        Self { code: e.code(), sqlstate: e.sqlstate().map(str::to_owned), text: e.to_string() }
    }
}

#[cfg(test)]
#[path = "runtime_tests.rs"]
mod tests;
