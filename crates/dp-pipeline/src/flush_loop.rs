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
//! flush. A full batch is handed to the sink at once, even while the one before is still being
//! written: the sink prepares it (maps its records) and writes it from its [`Turn`], which comes
//! when the batch before is durable, so the store goes straight on to it. At most
//! [`MAX_IN_FLIGHT`] batches are handed over at once, and polling waits while the batches
//! handed over and the one collected hold `MAX_IN_FLIGHT × max_rows` records: the instance
//! holds at most `2 × max_rows` records in memory (while the sink fails, one more batch may be
//! collected to be spilled, see [`crate::spill`]). How a batch is written
//! (retries, isolation of refused records) is [`crate::deliver`]'s; what happens before the
//! first poll and beside the loop (restore, leases, adoption) is [`crate::recovery`]'s.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dp_core::{Accumulator, Buffer, BufferError, FlushTrigger, Sink, SinkError, Source, Turn, TurnDone};
use tokio::task::JoinHandle;

use std::sync::atomic::Ordering;

use crate::deliver::{Delivered, Deliverer};
use crate::filter::Filtering;
use crate::metrics as m;
use crate::options::{CommitPolicy, InvalidSetting, PipelineOptions};
use crate::pause::PauseControl;
use crate::readiness::Readiness;
use crate::recovery::{leases, restore};
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
///
/// ```
/// use std::sync::Arc;
///
/// use dp_pipeline::{MemoryBuffer, Pipeline, PipelineOptions};
/// # use dp_core::{BatchOutcome, Record, Sink, SinkError, Source, SourceError};
/// # struct Lines; struct Counting;
/// # #[async_trait::async_trait] impl Source for Lines {
/// #     async fn poll(&mut self, _max: usize) -> Result<Vec<Record>, SourceError> { std::future::pending().await }
/// # }
/// # #[async_trait::async_trait] impl Sink for Counting {
/// #     async fn write_batch(&self, r: &[Record]) -> Result<BatchOutcome, SinkError> {
/// #         Ok(BatchOutcome { inserted: r.len(), ..BatchOutcome::default() })
/// #     }
/// # }
/// let options = PipelineOptions::new().shutdown_timeout(std::time::Duration::from_secs(10));
/// let pipeline = Pipeline::new(Box::new(Lines), Arc::new(MemoryBuffer::new()), Arc::new(Counting), options)?;
/// # let _ = pipeline;
/// # Ok::<(), dp_pipeline::InvalidSetting>(())
/// ```
pub struct Pipeline {
    source: Box<dyn Source>,
    deliverer: Arc<Deliverer>,
    options: PipelineOptions,
    readiness: Readiness,
    pause: PauseControl,
}

impl Pipeline {
    /// Wires the parts together after validating `options`. Nothing runs until
    /// [`Pipeline::run`]. The parts' [`health`](Source::health) probes are taken now, for
    /// [`Pipeline::readiness`].
    pub fn new(
        source: Box<dyn Source>,
        buffer: Arc<dyn Buffer>,
        sink: Arc<dyn Sink>,
        options: PipelineOptions,
    ) -> Result<Self, InvalidSetting> {
        options.validate()?;
        let probes = [source.health(), buffer.health(), sink.health()].into_iter().flatten().collect();
        let deliverer = Arc::new(Deliverer::new(sink, buffer, options.retry.clone()));
        let pause = PauseControl::default();
        let readiness =
            Readiness { stats: Arc::clone(&deliverer.stats), parts: probes, pause: pause.clone() };
        Ok(Self { source, deliverer, options, readiness, pause })
    }

    /// A handle that pauses and resumes this pipeline while it runs.
    pub fn pause_control(&self) -> PauseControl {
        self.pause.clone()
    }

    /// A handle for readiness probes, to read while the pipeline runs.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Live counters, to read while the pipeline runs.
    pub fn stats(&self) -> Arc<PipelineStats> {
        Arc::clone(&self.deliverer.stats)
    }

    /// Restores what an earlier run left in the buffer, then consumes until `shutdown`
    /// completes, then drains: writes what is buffered, commits, and closes every part.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<RunSummary, PipelineError> {
        let started = Instant::now();
        let Self { mut source, deliverer, options, readiness: _, pause } = self;
        let PipelineOptions { buffer: buffer_config, shutdown_timeout, commit_policy, filter, .. } = options;
        let mut filtering = filter.map(Filtering::new);
        let mut pause_changes = pause.watch();
        let mut paused = *pause_changes.borrow_and_update();
        m::set(m::PAUSED, usize::from(paused));
        let stats = Arc::clone(&deliverer.stats);
        // The lease must stay alive through a long restore, or another instance adopts us.
        let background = leases(&deliverer, buffer_config.max_rows, &pause);
        restore(&deliverer, buffer_config.max_rows).await?;
        PipelineStats::set(&stats.consuming, m::CONSUMING, 1);
        let mut write_ahead = WriteAhead::new(
            Arc::clone(&deliverer.buffer),
            Arc::clone(&stats),
            Arc::clone(&deliverer.buffer_healthy),
        );

        let mut acc = Accumulator::new(buffer_config.max_rows, buffer_config.flush_interval);
        let mut spill = Spill::new(&buffer_config, deliverer.buffer.read_back().is_some());
        // Batches handed to the sink, oldest first; each is written once the one before is.
        let mut in_flight: VecDeque<Flight> = VecDeque::new();
        // The turn of the next batch handed over: it comes when the last one is durable.
        let mut next_turn = Turn::now();
        let max_rows = buffer_config.max_rows;
        // Set when partitions were revoked: flush everything buffered as soon as possible.
        let mut flush_now = false;
        // After a failed poll: when the source may be polled again.
        let mut poll_again: Option<tokio::time::Instant> = None;
        let mut failed: Option<PipelineError> = None;
        tokio::pin!(shutdown);
        loop {
            let failing = stats.sink_failing.load(Ordering::Relaxed) > 0;
            if !paused {
                // Spilled batches are older than anything collected: they go first.
                if in_flight.is_empty()
                    && let Some(spilled) = spill.pop()
                {
                    in_flight.push_back(start_spilled(&deliverer, spilled, &mut next_turn));
                } else if may_start(&in_flight, &spill, failing) {
                    if flush_now {
                        flush_now = false;
                        if !acc.is_empty() {
                            in_flight.push_back(start(
                                &deliverer,
                                &mut acc,
                                FlushTrigger::Rebalance,
                                &mut next_turn,
                            ));
                        }
                    } else if acc.due(now()) == Some(FlushTrigger::Size) {
                        // Full while paused: written as soon as the pipeline resumes.
                        in_flight.push_back(start(&deliverer, &mut acc, FlushTrigger::Size, &mut next_turn));
                    }
                }
            }
            let flying = Held::sum(&in_flight);
            spill.offer(&mut acc, (flying.records, flying.bytes), failing);
            // A spilled batch in flight is read back into memory to be written.
            PipelineStats::set(&stats.memory_buffered, m::BUFFERED, acc.len() + flying.records);
            PipelineStats::set(&stats.spilled, m::SPILLED, spill.rows());
            m::set(m::BUFFERED_BYTES, acc.bytes() + flying.bytes);
            m::set(m::REDIS_BUFFERED, acc.keys() + flying.keys + spill.rows());
            let deadline = acc.deadline().map(tokio::time::Instant::from_std);
            // Room for the next poll: in the collected batch, and in memory beside the batches
            // handed over (a spilled one among them is read back into memory). While the sink
            // fails, the collected batch may fill beyond that when it will be spilled as soon as
            // it is full: it then leaves memory.
            let mut room =
                acc.room().min((MAX_IN_FLIGHT * max_rows).saturating_sub(acc.len() + flying.records));
            if room == 0 && failing && spill.would_take(&acc, (flying.records, flying.bytes)) {
                room = acc.room();
            }
            // While a batch is retried and memory is full, look again now and then whether the
            // collected batch can be spilled, or filled to be (the sink's state changes inside
            // the flush task).
            let stuck = !in_flight.is_empty() && room == 0;
            let source_resting = poll_again.is_some();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                done = join(&mut in_flight) => {
                    in_flight.pop_front();
                    complete(source.as_mut(), &mut write_ahead, done?);
                    if !paused
                        && may_start(&in_flight, &spill, failing)
                        && let Some(trigger) = acc.due(now())
                    {
                        in_flight.push_back(start(&deliverer, &mut acc, trigger, &mut next_turn));
                    }
                }
                changed = pause_changes.changed() => {
                    if changed.is_ok() {
                        paused = *pause_changes.borrow_and_update();
                        m::set(m::PAUSED, usize::from(paused));
                        if paused {
                            tracing::info!(buffered = acc.len(), writing = in_flight.len(), "paused: the batches handed to the sink finish, then nothing is consumed or written until resumed");
                        } else {
                            tracing::info!(buffered = acc.len(), "resumed");
                        }
                    }
                }
                () = tokio::time::sleep(SPILL_CHECK), if stuck => {}
                () = sleep_until(deadline), if deadline.is_some() && in_flight.is_empty() && !paused => {
                    in_flight.push_back(start(&deliverer, &mut acc, FlushTrigger::Interval, &mut next_turn));
                }
                () = sleep_until(poll_again), if source_resting => poll_again = None,
                polled = source.poll(room), if room > 0 && !source_resting && !paused => match polled {
                    Ok(records) => {
                        let polled = Instant::now();
                        PipelineStats::bump(&stats.consumed, records.len());
                        m::consumed(&records);
                        let records = match filtering.as_mut() {
                            Some(filtering) => {
                                let split = filtering.apply(records);
                                if !split.dropped.is_empty() {
                                    PipelineStats::bump(&stats.filtered, split.dropped.len());
                                    m::filtered(&split.reasons);
                                    // Done with, like a delivered record: the offset may pass it.
                                    if let Err(e) = source.acknowledge(&split.dropped) {
                                        tracing::warn!(error = %e, "storing offsets failed; the group may re-read these records");
                                    }
                                }
                                split.kept
                            }
                            None => records,
                        };
                        let appended = write_ahead.append(&records).await;
                        tracing::debug!(
                            target: m::TIMELINE,
                            records = records.len(),
                            polled = m::timeline_us(polled),
                            appended = m::timeline_us(Instant::now()),
                            "poll"
                        );
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
                        } else if may_start(&in_flight, &spill, failing)
                            && acc.due(now()) == Some(FlushTrigger::Size)
                        {
                            in_flight.push_back(start(&deliverer, &mut acc, FlushTrigger::Size, &mut next_turn));
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
            while let Some(flight) = in_flight.front_mut() {
                let done = join_handle(&mut flight.handle).await;
                in_flight.pop_front();
                complete(source.as_mut(), &mut write_ahead, done?);
            }
            // Nothing is in flight any more: each of these has its turn at once.
            while let Some(spilled) = spill.pop() {
                let done = Arc::clone(&deliverer).deliver_spilled(spilled.keys, Turn::now(), None).await?;
                complete(source.as_mut(), &mut write_ahead, done);
            }
            if !acc.is_empty() {
                let batch = acc.take();
                let done =
                    Arc::clone(&deliverer).deliver(batch, FlushTrigger::Shutdown, Turn::now(), None).await?;
                complete(source.as_mut(), &mut write_ahead, done);
            }
            if let Err(e) = source.commit().await {
                tracing::warn!(error = %e, "final offset commit failed; the group re-reads from the last commit");
            }
            Ok::<(), PipelineError>(())
        };
        let drained = tokio::time::timeout(shutdown_timeout, drain).await;
        for flight in in_flight.drain(..) {
            flight.handle.abort();
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

/// Batches handed to the sink at once: one being written, the next prepared and waiting for
/// its turn.
const MAX_IN_FLIGHT: usize = 2;

/// A batch handed to the sink: its task, and what it holds.
struct Flight {
    handle: JoinHandle<Result<Delivered, PipelineError>>,
    held: Held,
}

/// Whether a collected batch may be handed to the sink now: nothing spilled is waiting (it is
/// older), and either nothing is in flight, or there is room for one more and the sink is not
/// failing (while it fails, a full batch is spilled rather than queued behind the retries).
fn may_start(in_flight: &VecDeque<Flight>, spill: &Spill, sink_failing: bool) -> bool {
    spill.is_empty() && (in_flight.is_empty() || (in_flight.len() < MAX_IN_FLIGHT && !sink_failing))
}

/// How often a pipeline whose memory is full and whose flush is being retried checks whether
/// it can spill the collected batch.
const SPILL_CHECK: Duration = Duration::from_millis(250);

/// What a batch handed to the sink holds: records, their write-ahead keys, approximate bytes.
/// All of it is in memory while it is written (a spilled batch is read back first).
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    records: usize,
    keys: usize,
    bytes: usize,
}

impl Held {
    /// What the batches in flight hold together.
    fn sum(in_flight: &VecDeque<Flight>) -> Self {
        in_flight.iter().fold(Self::default(), |sum, f| Self {
            records: sum.records + f.held.records,
            keys: sum.keys + f.held.keys,
            bytes: sum.bytes + f.held.bytes,
        })
    }
}

/// Hands the collected batch to the sink, to be written once the batch handed over before it
/// is durable (`next_turn`, which then becomes this batch's own).
fn start(
    deliverer: &Arc<Deliverer>,
    acc: &mut Accumulator,
    trigger: FlushTrigger,
    next_turn: &mut Turn,
) -> Flight {
    let bytes = acc.bytes();
    let batch = acc.take();
    let held = Held { records: batch.records.len(), keys: batch.keys.len(), bytes };
    let (turn, done) = take_turn(next_turn);
    Flight { handle: tokio::spawn(Arc::clone(deliverer).deliver(batch, trigger, turn, Some(done))), held }
}

/// The turn of the batch handed over now (`next_turn`), and what signals the turn of the one
/// after it, which becomes `next_turn`.
fn take_turn(next_turn: &mut Turn) -> (Turn, TurnDone) {
    let (done, after) = Turn::after();
    (std::mem::replace(next_turn, after), done)
}

fn start_spilled(deliverer: &Arc<Deliverer>, spilled: Spilled, next_turn: &mut Turn) -> Flight {
    let n = spilled.keys.len();
    let held = Held { records: n, keys: n, bytes: spilled.bytes };
    let (turn, done) = take_turn(next_turn);
    Flight {
        handle: tokio::spawn(Arc::clone(deliverer).deliver_spilled(spilled.keys, turn, Some(done))),
        held,
    }
}

fn complete(source: &mut dyn Source, write_ahead: &mut WriteAhead, done: Delivered) {
    let Delivered { batch, outcome, trigger, elapsed } = done;
    write_ahead.delivered(&batch.records);
    tracing::debug!(
        trigger = trigger.as_str(),
        rows = batch.records.len(),
        inserted = outcome.inserted,
        updated = outcome.updated,
        deleted = outcome.deleted,
        duplicates = outcome.duplicates,
        dead_lettered = outcome.dead_lettered,
        elapsed_ms = elapsed.as_millis() as u64,
        "batch delivered"
    );
    if let Err(e) = source.acknowledge(&batch.records) {
        tracing::warn!(error = %e, "storing offsets failed; the group may re-read these records");
    }
}

/// Waits for the oldest batch in flight: batches are acknowledged in the order they were
/// handed over.
async fn join(in_flight: &mut VecDeque<Flight>) -> Result<Delivered, PipelineError> {
    match in_flight.front_mut() {
        Some(flight) => join_handle(&mut flight.handle).await,
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

#[cfg(test)]
#[path = "flush_loop_tests.rs"]
mod tests;
