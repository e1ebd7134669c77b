//! Writing one batch: the sink's transaction, retried with exponential backoff and full jitter
//! on outages, the refused records isolated and dead-lettered, the write-ahead copies removed.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use dp_core::{
    Batch, BatchOutcome, Buffer, BufferError, BufferKey, DeadLetter, FlushTrigger, Record, Sink, SinkError,
    Turn, TurnDone,
};

use crate::flush_loop::PipelineError;
use crate::metrics as m;
use crate::options::RetryConfig;
use crate::stats::PipelineStats;

/// A batch that reached the sink.
pub(crate) struct Delivered {
    pub(crate) batch: Batch,
    pub(crate) outcome: BatchOutcome,
    pub(crate) trigger: FlushTrigger,
    pub(crate) elapsed: Duration,
}

/// Writes batches: retries, isolation of refused records, write-ahead clean-up.
pub(crate) struct Deliverer {
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) buffer: Arc<dyn Buffer>,
    retry: RetryConfig,
    pub(crate) stats: Arc<PipelineStats>,
    /// Shared with the flush loop's [`WriteAhead`](crate::write_ahead::WriteAhead): false while
    /// the buffer is unreachable.
    pub(crate) buffer_healthy: Arc<AtomicBool>,
    /// Keys of delivered records whose deletion failed; retried with the next deletion.
    leftover_keys: Mutex<Vec<BufferKey>>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Deliverer {
    pub(crate) fn new(sink: Arc<dyn Sink>, buffer: Arc<dyn Buffer>, retry: RetryConfig) -> Self {
        Self {
            sink,
            buffer,
            retry,
            stats: Arc::default(),
            buffer_healthy: Arc::new(AtomicBool::new(true)),
            leftover_keys: Mutex::default(),
        }
    }

    /// Writes `batch` from its `turn` on (the sink may prepare it before), then signals
    /// `done`, the next batch's turn, and removes the write-ahead copies.
    pub(crate) async fn deliver(
        self: Arc<Self>,
        batch: Batch,
        trigger: FlushTrigger,
        turn: Turn,
        done: Option<TurnDone>,
    ) -> Result<Delivered, PipelineError> {
        let handed = Instant::now();
        let mut started = handed;
        let outcome = {
            let write = self.write(&batch.records, &turn);
            tokio::pin!(write);
            let mut came = turn.has_come();
            loop {
                tokio::select! {
                    biased;
                    written = &mut write => break written?,
                    waited = turn.wait(), if !came => match waited {
                        // Its duration counts from its turn, not from its preparation.
                        Ok(()) => (came, started) = (true, Instant::now()),
                        Err(e) => return Err(PipelineError::Task(e.to_string())),
                    },
                }
            }
        };
        if let Some(done) = done {
            done.done();
        }
        PipelineStats::add(&self.stats.inserted, m::INSERTED, outcome.inserted);
        PipelineStats::add(&self.stats.updated, m::UPDATED, outcome.updated);
        PipelineStats::add(&self.stats.deleted, m::DELETED, outcome.deleted);
        PipelineStats::add(&self.stats.duplicates, m::DUPLICATES, outcome.duplicates);
        PipelineStats::bump(&self.stats.dead_lettered, outcome.dead_lettered);
        PipelineStats::bump(&self.stats.batches, 1);
        let written = Instant::now();
        m::delivered(&batch.records, trigger, started.elapsed().as_secs_f64(), dp_core::unix_millis());
        self.remove_keys(&batch.keys).await;
        tracing::debug!(
            target: m::TIMELINE,
            rows = batch.records.len(),
            handed = m::timeline_us(handed),
            turn = m::timeline_us(started),
            written = m::timeline_us(written),
            removed = m::timeline_us(Instant::now()),
            "batch"
        );
        Ok(Delivered { batch, outcome, trigger, elapsed: started.elapsed() })
    }

    /// Reads a spilled batch back from the buffer (retrying while it is unreachable) and
    /// delivers it.
    pub(crate) async fn deliver_spilled(
        self: Arc<Self>,
        keys: Vec<BufferKey>,
        turn: Turn,
        done: Option<TurnDone>,
    ) -> Result<Delivered, PipelineError> {
        let Some(read_back) = self.buffer.read_back() else {
            // The flush loop spills only to a buffer that reads back.
            return Err(PipelineError::Fetch(BufferError::permanent("this buffer cannot read records back")));
        };
        let mut schedule = self.backoff();
        let fetched = loop {
            match read_back.fetch(&keys).await {
                Ok(fetched) => break fetched,
                Err(e) if e.is_transient() => {
                    let delay = self.next_delay(&mut schedule);
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
        self.deliver(Batch { records, keys }, FlushTrigger::Spilled, turn, done).await
    }

    /// The next delay of `schedule` with full jitter: uniform between zero and the exponential
    /// cap (the cap stays at `retry.max_backoff` once reached).
    fn next_delay(&self, schedule: &mut backon::ExponentialBackoff) -> Duration {
        schedule.next().unwrap_or(self.retry.max_backoff).mul_f64(rand::random::<f64>())
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
    async fn write(&self, records: &[Record], turn: &Turn) -> Result<BatchOutcome, PipelineError> {
        let mut isolation = Isolation { len: records.len(), ..Isolation::default() };
        let outcome = self.isolate(records, turn, &mut isolation).await?;
        let mut classified = 0;
        for (class, n) in &outcome.dead_letter_classes {
            metrics::counter!(m::DEAD_LETTERED, "class" => class.clone()).increment(*n as u64);
            classified += n;
        }
        if outcome.dead_lettered > classified {
            metrics::counter!(m::DEAD_LETTERED, "class" => "unclassified")
                .increment((outcome.dead_lettered - classified) as u64);
        }
        Ok(outcome)
    }

    /// Writes `records`, a part of the batch `iso` follows; on a permanent error, halves them
    /// until the refused records are isolated and dead-letters them: O(k log n) statements for
    /// k bad records out of n.
    fn isolate<'a>(
        &'a self,
        records: &'a [Record],
        turn: &'a Turn,
        iso: &'a mut Isolation,
    ) -> BoxFuture<'a, Result<BatchOutcome, PipelineError>> {
        Box::pin(async move {
            let mut err = match self
                .retrying(|| self.sink.write_batch_in_turn(records, turn), iso.statement.as_ref(), Some(turn))
                .await?
            {
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
                    match self
                        .retrying(
                            || self.sink.write_batch_in_turn(records, turn),
                            iso.statement.as_ref(),
                            Some(turn),
                        )
                        .await?
                    {
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
                // A sink may refuse a record while preparing, before the batch's turn: its dead
                // letter waits for the turn too.
                turn.wait().await.map_err(|e| PipelineError::Task(e.to_string()))?;
                return match self
                    .retrying(|| self.sink.dead_letter(std::slice::from_ref(&entry)), None, None)
                    .await?
                {
                    Ok(()) => {
                        let mut outcome = BatchOutcome::default();
                        outcome.dead_letter("sink_rejected");
                        Ok(outcome)
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
            let mut outcome = self.isolate(left, turn, iso).await?;
            outcome += self.isolate(right, turn, iso).await?;
            Ok(outcome)
        })
    }

    /// Runs `op` until it succeeds or is refused (the inner `Err`: a data fault), backing off
    /// exponentially with full jitter on outages and on statement faults — among them a
    /// presumed data fault equal to `guard`, which [`Isolation`] found to be one. When `turn`
    /// was abandoned (the batch before failed), the error is that, not the sink's: it stops
    /// at once, counted as no sink failure.
    async fn retrying<'a, T>(
        &self,
        mut op: impl FnMut() -> BoxFuture<'a, Result<T, SinkError>>,
        guard: Option<&Refusal>,
        turn: Option<&Turn>,
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
            if turn.is_some_and(Turn::is_abandoned) {
                return Err(PipelineError::Task(e.to_string()));
            }
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
            let delay = self.next_delay(&mut schedule);
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
