//! The consumer's own thread: it polls librdkafka, hands records to the async side in chunks,
//! pauses the partitions while the pipeline is behind, and runs the rebalance callback.
//!
//! The callback runs on this thread, inside `poll`, so it may block: on revocation it waits
//! (up to `revocation_timeout`) until the pipeline has delivered every record it holds of the
//! revoked partitions, then commits before letting the partitions go. The async side is never
//! blocked by it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use dp_core::{Header, Record, Watermarks};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;

/// Records per chunk handed to the async side.
pub(crate) const CHUNK: usize = 500;
/// Records handed over and not yet taken, above which the partitions are paused.
const MAX_QUEUED: usize = 2 * CHUNK;
/// How long one `poll` waits when there is nothing to hand over.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long the pipeline may take no records before the partitions are paused. Shorter waits
/// are ordinary backpressure (a batch being written): the thread just stops polling, since a
/// pause would discard what librdkafka prefetched.
const PAUSE_AFTER: Duration = Duration::from_secs(1);
/// A pause longer than this is logged at info (shorter ones are ordinary backpressure).
const LONG_PAUSE: Duration = Duration::from_secs(5);
/// Bound on the calls the rebalance callback makes to look up start positions.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the thread tells the async side, in order.
pub(crate) enum Event {
    /// Records, in the order received (per partition, offset order).
    Records(Vec<Record>),
    /// Partitions are being revoked: deliver what is held of them, then settle `generation`.
    Revoking { generation: u64, partitions: Vec<(String, i32)> },
    /// Partitions were revoked: nothing more of them will be committed by this member.
    Revoked(Vec<(String, i32)>),
    /// The client reported an error.
    Error(KafkaError),
    /// The thread ended (it panicked, or the source is closing).
    Stopped,
}

/// State shared by the thread, the callback it runs, and the async side.
pub(crate) struct Shared {
    /// Set when the source closes or is dropped: the thread leaves the group and ends.
    pub(crate) stop: AtomicBool,
    /// Records handed over and not yet taken by the async side.
    pub(crate) queued: AtomicUsize,
    /// The assigned partitions are paused (the pipeline is behind); new ones start paused too.
    pub(crate) paused: AtomicBool,
    /// False once the client's statistics show no broker connection up.
    pub(crate) reachable: AtomicBool,
    /// An [`Event::Error`] is waiting to be taken. librdkafka repeats its errors (all brokers
    /// down, transport failure) for as long as an outage lasts, and the pipeline backs off
    /// after each one it takes: queueing them all would leave a backlog of stale errors that
    /// stalls consumption long after the broker is back. One waiting error says it all.
    error_waiting: AtomicBool,
    /// Bumped by every rebalance: reading positions may have moved, so a record no longer
    /// follows the one read before it ([`Record::follows`]).
    rebalances: AtomicU64,
    revocation: Mutex<Revocation>,
    settled: Condvar,
    /// Signalled when the async side takes records.
    room: Condvar,
    room_lock: Mutex<()>,
    /// Records received and not yet handed over (the callback drops revoked partitions' ones).
    chunk: Mutex<Vec<Record>>,
    pub(crate) watermarks: OnceLock<Arc<dyn Watermarks>>,
    pub(crate) runtime: OnceLock<tokio::runtime::Handle>,
    revocation_timeout: Duration,
}

#[derive(Default)]
struct Revocation {
    generation: u64,
    settled: bool,
}

impl Shared {
    pub(crate) fn new(revocation_timeout: Duration) -> Self {
        Self {
            stop: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            reachable: AtomicBool::new(true),
            error_waiting: AtomicBool::new(false),
            rebalances: AtomicU64::new(0),
            revocation: Mutex::default(),
            settled: Condvar::new(),
            room: Condvar::new(),
            room_lock: Mutex::new(()),
            chunk: Mutex::default(),
            watermarks: OnceLock::new(),
            runtime: OnceLock::new(),
            revocation_timeout,
        }
    }

    /// Tells a waiting revocation callback that every record of its partitions is delivered.
    pub(crate) fn settle(&self, generation: u64) {
        let mut r = lock(&self.revocation);
        if r.generation == generation {
            r.settled = true;
            self.settled.notify_all();
        }
    }

    /// Stops the thread and wakes a callback that is waiting, so closing never waits on it.
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _guard = lock(&self.revocation);
        self.settled.notify_all();
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Whether to hand an error over: not while another one is waiting to be taken.
    fn offer_error(&self) -> bool {
        !self.error_waiting.swap(true, Ordering::AcqRel)
    }

    /// Called by the async side when it took an [`Event::Error`].
    pub(crate) fn error_taken(&self) {
        self.error_waiting.store(false, Ordering::Release);
    }

    /// Called by the async side when it took `n` records.
    pub(crate) fn taken(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
        let _guard = lock(&self.room_lock);
        self.room.notify_one();
    }

    fn has_room(&self, n: usize) -> bool {
        let queued = self.queued.load(Ordering::Acquire);
        queued == 0 || queued + n <= MAX_QUEUED
    }

    /// Waits up to `limit` for room for `n` more records; true if there is room.
    fn wait_for_room(&self, n: usize, limit: Duration) -> bool {
        let guard = lock(&self.room_lock);
        let _ = self
            .room
            .wait_timeout_while(guard, limit, |()| !self.has_room(n) && !self.stopping())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.has_room(n)
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (a counter and
/// a chunk of records) is still consistent, so keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The consumer's context: runs rebalances on the polling thread.
pub(crate) struct PollerContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) events: UnboundedSender<Event>,
}

impl ClientContext for PollerContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): broker reachability and the
    /// consumer lag of each assigned partition, as metrics.
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        let reachable = statistics.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
        self.shared.reachable.store(reachable, Ordering::Release);
        metrics::gauge!("dp_kafka_brokers_up").set(f64::from(u8::from(reachable)));
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal unassigned partition; a lag of -1 is unknown.
                if *partition >= 0 && p.desired && p.consumer_lag >= 0 {
                    metrics::gauge!("dp_kafka_consumer_lag", "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for PollerContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        self.shared.rebalances.fetch_add(1, Ordering::AcqRel);
        let parts: Vec<(String, i32)> =
            tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let moved = self.start_at_watermarks(consumer, tpl, &parts);
                let assigned =
                    if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                // Everything below a watermark is stored: commit it as a start position, so
                // Kafka's lag is true even for a partition that receives nothing new.
                if assigned.is_ok()
                    && moved.count() > 0
                    && let Err(e) = consumer.store_offsets(&moved)
                {
                    tracing::warn!(error = %e, "cannot store the watermarks as kafka offsets");
                }
                // While the pipeline is behind, new partitions wait like the others.
                if self.shared.paused.load(Ordering::Acquire)
                    && let Err(e) = consumer.pause(tpl)
                {
                    tracing::warn!(error = %e, "cannot pause newly assigned partitions");
                }
                metrics::counter!("dp_kafka_rebalances_total", "kind" => "assigned").increment(1);
                match assigned {
                    Ok(()) => tracing::info!(partitions = ?parts, "kafka partitions assigned"),
                    Err(e) => tracing::error!(partitions = ?parts, error = %e, "kafka assignment failed"),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = ?parts, "kafka partitions revoked");
                metrics::counter!("dp_kafka_rebalances_total", "kind" => "revoked").increment(1);
                self.hand_over(consumer, &parts);
                let unassigned =
                    if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = unassigned {
                    tracing::warn!(partitions = ?parts, error = %e, "kafka unassignment failed");
                }
                // The receiver is gone only when the source is; nothing is left to fence then.
                let _ = self.events.send(Event::Revoked(parts));
            }
            other => {
                tracing::warn!(error = %RDKafkaErrorCode::from(other), "kafka rebalance error");
                let _ = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                let _ = self.events.send(Event::Revoked(parts));
            }
        }
    }
}

impl PollerContext {
    /// Moves newly assigned partitions whose watermark is ahead of Kafka's committed offset to
    /// the watermark, so records the store already holds are not read again, and returns those
    /// partitions at their new positions. Any failure here only costs re-reading: the store
    /// itself skips records below its watermark.
    fn start_at_watermarks(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        parts: &[(String, i32)],
    ) -> TopicPartitionList {
        let mut moved = TopicPartitionList::new();
        let (Some(store), Some(runtime)) = (self.shared.watermarks.get(), self.shared.runtime.get()) else {
            return moved;
        };
        if parts.is_empty() {
            return moved;
        }
        // librdkafka can deliver a last assignment while the consumer is being closed, and then
        // on whichever thread drops it: possibly a runtime worker, where `block_on` panics. A
        // closing consumer reads nothing, so its start positions do not matter.
        if self.shared.stopping() || tokio::runtime::Handle::try_current().is_ok() {
            tracing::debug!(partitions = ?parts, "assignment while closing; start positions left to kafka");
            return moved;
        }
        let marks =
            runtime.block_on(async { tokio::time::timeout(LOOKUP_TIMEOUT, store.next_offsets(parts)).await });
        let marks = match marks {
            Ok(Ok(marks)) if marks.is_empty() => return moved,
            Ok(Ok(marks)) => marks,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read start positions from the watermark store; starting from kafka's committed offsets");
                return moved;
            }
            Err(_) => {
                tracing::warn!(
                    timeout = ?LOOKUP_TIMEOUT,
                    "watermark store did not answer; starting from kafka's committed offsets"
                );
                return moved;
            }
        };
        let committed = consumer.committed_offsets(tpl.clone(), LOOKUP_TIMEOUT).map_err(|e| {
            tracing::warn!(error = %e, "cannot read kafka's committed offsets; starting at the watermarks");
        });
        for (topic, partition, watermark) in marks {
            let kafka = committed.as_ref().ok().and_then(|c| c.find_partition(&topic, partition)).and_then(
                |e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                },
            );
            if kafka.is_some_and(|k| k >= watermark) {
                continue;
            }
            match tpl.set_partition_offset(&topic, partition, Offset::Offset(watermark)) {
                Ok(()) => {
                    tracing::info!(
                        topic,
                        partition,
                        kafka_committed = ?kafka,
                        watermark,
                        "partition starts at the stored watermark, ahead of kafka's committed offset"
                    );
                    let _ = moved.add_partition_offset(&topic, partition, Offset::Offset(watermark));
                }
                Err(e) => tracing::warn!(topic, partition, error = %e, "cannot start at the watermark"),
            }
        }
        moved
    }

    /// Before revoked partitions are let go: waits until the pipeline has delivered what it
    /// holds of them, then commits, so the next owner starts where this member stopped.
    fn hand_over(&self, consumer: &BaseConsumer<Self>, parts: &[(String, i32)]) {
        if consumer.assignment_lost() {
            tracing::warn!(partitions = ?parts, "assignment lost (session timed out); nothing is committed for it, the next owner re-reads from the last commit");
            return;
        }
        let started = Instant::now();
        let revoked = |r: &Record| parts.iter().any(|(t, p)| *t == *r.topic && *p == r.partition);
        // Not handed over yet, so neither buffered nor acknowledged: the next owner reads them.
        lock(&self.shared.chunk).retain(|r| !revoked(r));
        let settled = if self.shared.stopping() {
            true
        } else {
            let generation = {
                let mut r = lock(&self.shared.revocation);
                r.generation += 1;
                r.settled = false;
                r.generation
            };
            if self.events.send(Event::Revoking { generation, partitions: parts.to_vec() }).is_err() {
                return;
            }
            let guard = lock(&self.shared.revocation);
            let (guard, _) = self
                .shared
                .settled
                .wait_timeout_while(guard, self.shared.revocation_timeout, |r| {
                    !(self.shared.stopping() || r.generation == generation && r.settled)
                })
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            guard.generation == generation && guard.settled
        };
        if !settled {
            tracing::warn!(
                partitions = ?parts,
                timeout = ?self.shared.revocation_timeout,
                "revoked partitions not delivered within kafka.revocation_timeout; the next owner re-reads what was not committed (the offset watermark keeps it from being stored twice)"
            );
            return;
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!(
                partitions = ?parts,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "revoked partitions delivered and committed"
            ),
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
            Err(e) => tracing::warn!(partitions = ?parts, error = %e, "commit on revocation failed"),
        }
    }
}

/// One `Arc<str>` per topic name, shared across records. Messages come in runs of one topic, so
/// the last one is compared before the map is hashed.
#[derive(Default)]
struct TopicNames {
    last: Option<Arc<str>>,
    all: HashMap<String, Arc<str>>,
}

impl TopicNames {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(t) = self.last.as_ref().filter(|t| ***t == *name) {
            return Arc::clone(t);
        }
        let t = match self.all.get(name) {
            Some(t) => Arc::clone(t),
            None => {
                let t: Arc<str> = Arc::from(name);
                self.all.insert(name.to_owned(), Arc::clone(&t));
                t
            }
        };
        self.last = Some(Arc::clone(&t));
        t
    }
}

/// The last offset read per partition since the last rebalance (or error), for `follows`.
/// Messages come in runs of one partition (a fetched message set): the partition of the
/// current run is kept apart, and the map is touched only when the run changes.
#[derive(Default)]
struct LastRead {
    run: Option<(Arc<str>, i32, i64)>,
    others: HashMap<(Arc<str>, i32), i64>,
}

impl LastRead {
    /// Records `offset` as the last one read of the partition; returns the one read before it.
    fn replace(&mut self, topic: &Arc<str>, partition: i32, offset: i64) -> Option<i64> {
        if let Some((t, p, o)) = &mut self.run
            && *p == partition
            && **t == **topic
        {
            return Some(std::mem::replace(o, offset));
        }
        if let Some((t, p, o)) = self.run.take() {
            self.others.insert((t, p), o);
        }
        let previous = self.others.remove(&(Arc::clone(topic), partition));
        self.run = Some((Arc::clone(topic), partition, offset));
        previous
    }

    fn clear(&mut self) {
        self.run = None;
        self.others.clear();
    }
}

/// Converts a message, sharing one `Arc<str>` per topic name across records.
fn to_record(topics: &mut TopicNames, m: &BorrowedMessage<'_>, follows: Option<i64>) -> Record {
    let topic = topics.get(m.topic());
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter().map(|h| Header { name: h.key.to_owned(), value: h.value.map(<[u8]>::to_vec) }).collect()
        })
        .unwrap_or_default();
    Record {
        topic,
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        headers,
        timestamp_ms: m.timestamp().to_millis(),
        payload: m.payload().map(<[u8]>::to_vec),
        follows,
    }
}

/// The thread's body: poll, hand over, pause while the pipeline is behind, leave on stop.
pub(crate) fn run(consumer: Arc<BaseConsumer<PollerContext>>) {
    let ctx = consumer.context();
    // Sent however the thread ends, a panic included, so `poll` never waits on a dead thread.
    struct Stopped<'a>(&'a UnboundedSender<Event>);
    impl Drop for Stopped<'_> {
        fn drop(&mut self) {
            let _ = self.0.send(Event::Stopped);
        }
    }
    let _stopped = Stopped(&ctx.events);
    let shared = Arc::clone(&ctx.shared);
    let mut topics = TopicNames::default();
    let mut last = LastRead::default();
    let mut epoch = shared.rebalances.load(Ordering::Acquire);
    let mut paused = false;
    let mut pause = Pause::default();
    while !shared.stopping() {
        if paused {
            pause.check();
        }
        let pending = lock(&shared.chunk).len();
        let timeout = if pending > 0 && !paused { Duration::ZERO } else { IDLE_POLL };
        let polled = consumer.poll(timeout);
        let now = shared.rebalances.load(Ordering::Acquire);
        if now != epoch {
            epoch = now;
            last.clear();
        }
        match polled {
            Some(Ok(m)) => {
                let mut record = to_record(&mut topics, &m, None);
                drop(m);
                let previous = last.replace(&record.topic, record.partition, record.offset);
                record.follows = previous.filter(|&p| p < record.offset);
                let mut chunk = lock(&shared.chunk);
                chunk.push(record);
                if chunk.len() < CHUNK && !paused {
                    continue;
                }
            }
            Some(Err(e)) => {
                // A reset position (offset out of range, say) is reported as an error: what
                // follows may not continue what was read.
                last.clear();
                if shared.offer_error() {
                    // The receiver is gone only when the source is.
                    if ctx.events.send(Event::Error(e)).is_err() {
                        return;
                    }
                } else {
                    tracing::debug!(error = %e, "kafka consumer error (another one is waiting to be taken)");
                }
            }
            None => {}
        }
        let mut chunk = lock(&shared.chunk);
        if chunk.is_empty() {
            continue;
        }
        if shared.has_room(chunk.len()) {
            let records = std::mem::take(&mut *chunk);
            drop(chunk);
            shared.queued.fetch_add(records.len(), Ordering::AcqRel);
            if ctx.events.send(Event::Records(records)).is_err() {
                return;
            }
            if paused {
                paused = false;
                set_paused(&consumer, false);
                pause.end();
            }
        } else if !paused {
            let n = chunk.len();
            drop(chunk);
            if !shared.wait_for_room(n, PAUSE_AFTER) {
                paused = true;
                set_paused(&consumer, true);
                pause.begin();
            }
        }
    }
    leave(&consumer);
}

/// Logs pauses long enough to matter (the sink is down or much slower than Kafka), once each.
#[derive(Default)]
struct Pause {
    since: Option<Instant>,
    reported: bool,
}

impl Pause {
    fn begin(&mut self) {
        self.since = Some(Instant::now());
        self.reported = false;
    }

    fn check(&mut self) {
        if let Some(since) = self.since
            && !self.reported
            && since.elapsed() >= LONG_PAUSE
        {
            self.reported = true;
            tracing::info!(
                paused_for_s = LONG_PAUSE.as_secs(),
                "kafka partitions paused: the pipeline is not taking records (sink down or slow); group membership is kept"
            );
        }
    }

    fn end(&mut self) {
        if let Some(since) = self.since.take()
            && self.reported
        {
            tracing::info!(paused_for_ms = since.elapsed().as_millis() as u64, "kafka partitions resumed");
        }
    }
}

/// Pauses or resumes every assigned partition. A paused partition keeps its group membership
/// (the thread goes on polling); librdkafka re-fetches from the last record handed out.
fn set_paused(consumer: &BaseConsumer<PollerContext>, pause: bool) {
    consumer.context().shared.paused.store(pause, Ordering::Release);
    metrics::gauge!("dp_kafka_paused").set(f64::from(u8::from(pause)));
    let result =
        consumer.assignment().and_then(|a| if pause { consumer.pause(&a) } else { consumer.resume(&a) });
    match result {
        Ok(()) if pause => tracing::debug!("pipeline behind: kafka partitions paused"),
        Ok(()) => tracing::debug!("kafka partitions resumed"),
        Err(e) => tracing::warn!(error = %e, pause, "cannot pause or resume kafka partitions"),
    }
}

/// Leaves the group: unsubscribes and serves the resulting revocation (which commits what is
/// stored and does not wait, since the pipeline has drained).
fn leave(consumer: &BaseConsumer<PollerContext>) {
    consumer.unsubscribe();
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    while Instant::now() < deadline && consumer.assignment().is_ok_and(|a| a.count() > 0) {
        // Records still arriving are neither handed over nor committed: they are dropped here
        // and read again by the next owner.
        let _ = consumer.poll(IDLE_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_read_before_is_kept_per_partition_across_runs() {
        let mut topics = TopicNames::default();
        let (a, b) = (topics.get("a"), topics.get("b"));
        assert!(Arc::ptr_eq(&a, &topics.get("a")), "one name, one shared string");
        let mut last = LastRead::default();
        assert_eq!(last.replace(&a, 0, 10), None);
        assert_eq!(last.replace(&a, 0, 11), Some(10));
        assert_eq!(last.replace(&a, 1, 5), None, "another partition of the topic");
        assert_eq!(last.replace(&b, 0, 7), None, "the same partition of another topic");
        assert_eq!(last.replace(&a, 0, 12), Some(11), "back to a run read before");
        assert_eq!(last.replace(&a, 1, 6), Some(5));
        assert_eq!(last.replace(&b, 0, 8), Some(7));
        last.clear();
        assert_eq!(last.replace(&a, 0, 13), None, "nothing follows across a rebalance");
    }

    #[test]
    fn one_error_waits_at_a_time() {
        let shared = Shared::new(Duration::from_secs(1));
        assert!(shared.offer_error(), "the first error is handed over");
        for _ in 0..1_000 {
            assert!(!shared.offer_error(), "repeats are dropped while it waits");
        }
        shared.error_taken();
        assert!(shared.offer_error(), "the next error after it was taken is handed over");
    }
}
