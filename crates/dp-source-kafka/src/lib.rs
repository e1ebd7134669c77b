//! The Kafka [`Source`]: a consumer-group member that commits only what is durable.
//!
//! The consumer runs with `enable.auto.offset.store=false`: librdkafka's periodic auto-commit
//! commits only offsets this source has *stored*, and it stores an offset only when the
//! [`OffsetTracker`] says every record of the partition up to it has been acknowledged as
//! delivered. A record still in memory, or still being written, therefore holds back the
//! commit of every later record of its partition.
//!
//! A new consumer group starts from the earliest offset (`auto.offset.reset=earliest`), as Kafka
//! Connect sinks do, so nothing already in the topic is skipped.
//!
//! On revocation the tracker forgets the revoked partitions: a batch that completes after its
//! partition moved to another member is never committed by this one (it is fenced), and the new
//! owner re-reads from the last committed offset; the idempotent sink absorbs the overlap.

mod config;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dp_core::{Header, OffsetTracker, Record, Source, SourceError, Watermarks};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

pub use config::{KafkaSourceConfig, string_or_list};

/// Errors of the Kafka source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaSourceError {
    /// The consumer could not be created from the configuration.
    #[error("cannot create kafka consumer for brokers {brokers}: {source}")]
    Create {
        /// The configured bootstrap servers.
        brokers: String,
        /// The client's error.
        source: KafkaError,
    },
    /// Subscribing to the topics failed.
    #[error("cannot subscribe to topics {topics:?}: {source}")]
    Subscribe {
        /// The configured topics.
        topics: Vec<String>,
        /// The client's error.
        source: KafkaError,
    },
    /// The brokers did not answer a metadata request.
    #[error("kafka brokers {brokers} did not answer within {timeout:?}: {source}")]
    Unreachable {
        /// The configured bootstrap servers.
        brokers: String,
        /// How long we waited.
        timeout: Duration,
        /// The client's error.
        source: KafkaError,
    },
}

/// Partitions revoked and assigned by rebalances, handed from the client's callback (which
/// runs inside `recv`) to the source.
#[derive(Default)]
struct RebalanceContext {
    revoked: Mutex<Vec<(String, i32)>>,
    assigned: Mutex<Vec<(String, i32)>>,
    /// Wakes a waiting `poll` when partitions are revoked.
    revocation: tokio::sync::Notify,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
                tracing::info!(partitions = ?parts, "kafka partitions revoked");
                if let Ok(mut revoked) = self.revoked.lock() {
                    revoked.extend(parts);
                }
                self.revocation.notify_one();
            }
            Rebalance::Assign(tpl) => {
                let parts: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
                tracing::info!(partitions = ?parts, "kafka partitions assigned");
                if let Ok(mut assigned) = self.assigned.lock() {
                    assigned.extend(parts);
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
        }
    }
}

/// A Kafka consumer-group member implementing [`Source`].
pub struct KafkaSource {
    consumer: StreamConsumer<RebalanceContext>,
    tracker: OffsetTracker,
    topics: HashMap<String, Arc<str>>,
    pending: Vec<Record>,
    linger: Duration,
    linger_deadline: Option<Instant>,
    watermarks: Option<Arc<dyn Watermarks>>,
    /// Assigned partitions whose start position was not yet checked against the watermarks.
    unchecked: HashSet<(String, i32)>,
    /// Records of unchecked partitions, waiting for that check.
    held: Vec<Record>,
    /// Partitions were revoked since [`Source::revoked`] was last asked.
    revoked_since: bool,
}

impl KafkaSource {
    /// Creates the consumer and subscribes to the configured topics. Joining the group happens
    /// on the first [`poll`](Source::poll).
    pub fn new(config: &KafkaSourceConfig) -> Result<Self, KafkaSourceError> {
        let consumer: StreamConsumer<RebalanceContext> = config
            .client_config()
            .create_with_context(RebalanceContext::default())
            .map_err(|source| KafkaSourceError::Create { brokers: config.brokers.clone(), source })?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| KafkaSourceError::Subscribe { topics: config.topics.clone(), source })?;
        Ok(Self {
            consumer,
            tracker: OffsetTracker::new(),
            topics: HashMap::new(),
            pending: Vec::new(),
            linger: config.poll_linger,
            linger_deadline: None,
            watermarks: None,
            unchecked: HashSet::new(),
            held: Vec::new(),
            revoked_since: false,
        })
    }

    /// Starts each newly assigned partition at the larger of Kafka's committed offset and the
    /// watermark `store` reports, so records already stored are not read again even when the
    /// Kafka commit was lost.
    pub fn with_watermarks(mut self, store: Arc<dyn Watermarks>) -> Self {
        self.watermarks = Some(store);
        self
    }

    /// Asks the brokers for metadata, to check they answer.
    pub async fn check_connection(
        config: &KafkaSourceConfig,
        timeout: Duration,
    ) -> Result<(), KafkaSourceError> {
        let consumer: BaseConsumer = config
            .client_config()
            .create()
            .map_err(|source| KafkaSourceError::Create { brokers: config.brokers.clone(), source })?;
        let brokers = config.brokers.clone();
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, timeout).map(|_| ()))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
            .map_err(|source| KafkaSourceError::Unreachable { brokers, timeout, source })
    }

    /// Records handed out and not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.tracker.pending()
    }

    fn take_rebalances(&mut self) {
        let ctx = self.consumer.context();
        let revoked = ctx.revoked.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
        let assigned = ctx.assigned.lock().map(|mut a| std::mem::take(&mut *a)).unwrap_or_default();
        for (topic, partition) in revoked {
            self.revoked_since = true;
            self.tracker.forget(&topic, partition);
            self.held.retain(|r| !(*r.topic == *topic && r.partition == partition));
            self.unchecked.remove(&(topic, partition));
        }
        if self.watermarks.is_some() {
            self.unchecked.extend(assigned);
        }
    }

    fn accept(&mut self, record: Record) {
        self.tracker.register(&record.topic, record.partition, record.offset);
        self.pending.push(record);
    }

    /// Checks held records' partitions against the watermarks: a partition whose watermark is
    /// ahead of the first record read is moved forward to it (`seek`), and what was read below
    /// it is dropped; records at or above it are accepted.
    async fn check_held(&mut self) -> Result<(), SourceError> {
        let Some(store) = self.watermarks.clone() else { return Ok(()) };
        let wanted: Vec<(String, i32)> = self
            .held
            .iter()
            .map(|r| (r.topic.to_string(), r.partition))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let marks = store.next_offsets(&wanted).await.map_err(|e| {
            SourceError::transient("cannot read start positions from the watermark store").with_source(e)
        })?;
        let mark = |t: &str, p: i32| marks.iter().find(|(mt, mp, _)| mt == t && *mp == p).map(|m| m.2);
        let mut seeked: HashSet<(String, i32)> = HashSet::new();
        for (topic, partition) in &wanted {
            let first =
                self.held.iter().find(|r| *r.topic == **topic && r.partition == *partition).map(|r| r.offset);
            if let (Some(w), Some(first)) = (mark(topic, *partition), first)
                && first < w
            {
                tracing::info!(
                    topic,
                    partition,
                    kafka_position = first,
                    watermark = w,
                    "partition starts at the stored watermark, ahead of kafka's committed offset"
                );
                self.consumer.seek(topic, *partition, Offset::Offset(w), Duration::from_secs(10)).map_err(
                    |e| SourceError::transient("cannot seek to the stored watermark").with_source(e),
                )?;
                seeked.insert((topic.clone(), *partition));
            }
            self.unchecked.remove(&(topic.clone(), *partition));
        }
        // After a seek the client re-reads from the watermark, so nothing read before it is kept.
        for r in std::mem::take(&mut self.held) {
            if !seeked.contains(&(r.topic.to_string(), r.partition)) {
                self.accept(r);
            }
        }
        Ok(())
    }
}

/// Converts a message, sharing one `Arc<str>` per topic name across records.
fn to_record(topics: &mut HashMap<String, Arc<str>>, m: &BorrowedMessage<'_>) -> Record {
    let topic = match topics.get(m.topic()) {
        Some(t) => Arc::clone(t),
        None => {
            let t: Arc<str> = Arc::from(m.topic());
            topics.insert(m.topic().to_owned(), Arc::clone(&t));
            t
        }
    };
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
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn poll(&mut self, max: usize) -> Result<Vec<Record>, SourceError> {
        let max = max.max(1);
        if !self.held.is_empty()
            && let Err(e) = self.check_held().await
        {
            if self.pending.is_empty() {
                return Err(e);
            }
            tracing::warn!(error = %e, "start positions not checked yet; retrying on the next poll");
            return Ok(std::mem::take(&mut self.pending));
        }
        // Everything received is moved into `self.pending` before the next await point, so a
        // cancelled call loses nothing: the next call returns it.
        while self.pending.len() < max {
            let recv = async {
                match self.linger_deadline {
                    None => Some(self.consumer.recv().await),
                    Some(deadline) => tokio::time::timeout_at(deadline, self.consumer.recv()).await.ok(),
                }
            };
            let received = tokio::select! {
                r = recv => match r {
                    Some(r) => r,
                    None => break,
                },
                () = self.consumer.context().revocation.notified() => {
                    self.take_rebalances();
                    break;
                }
            };
            match received {
                Ok(m) => {
                    let record = to_record(&mut self.topics, &m);
                    drop(m);
                    self.take_rebalances();
                    if self.unchecked.contains(&(record.topic.to_string(), record.partition)) {
                        self.held.push(record);
                        if let Err(e) = self.check_held().await {
                            if self.pending.is_empty() {
                                return Err(e);
                            }
                            tracing::warn!(error = %e, "start positions not checked yet; retrying on the next poll");
                            break;
                        }
                    } else {
                        self.accept(record);
                    }
                    if !self.pending.is_empty() {
                        self.linger_deadline.get_or_insert_with(|| Instant::now() + self.linger);
                    }
                }
                Err(e) if !self.pending.is_empty() => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    break;
                }
                Err(e) => {
                    return Err(SourceError::transient("kafka consumer error").with_source(e));
                }
            }
        }
        self.linger_deadline = None;
        Ok(std::mem::take(&mut self.pending))
    }

    fn acknowledge(&mut self, delivered: &[Record]) -> Result<(), SourceError> {
        self.take_rebalances();
        for r in delivered {
            self.tracker.acknowledge(&r.topic, r.partition, r.offset);
        }
        for (topic, partition, next) in self.tracker.take_commits() {
            let mut tpl = TopicPartitionList::new();
            if let Err(e) = tpl.add_partition_offset(&topic, partition, Offset::Offset(next)) {
                return Err(SourceError::permanent("cannot build offset list").with_source(e));
            }
            match self.consumer.store_offsets(&tpl) {
                Ok(()) => {
                    tracing::trace!(topic = &*topic, partition, offset = next, "offset stored")
                }
                // The partition is no longer ours: the new owner re-reads from the last commit.
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::State) => {
                    tracing::debug!(
                        topic = &*topic,
                        partition,
                        offset = next,
                        "offset not stored: partition not assigned"
                    );
                }
                Err(e) => {
                    return Err(SourceError::transient("cannot store kafka offset").with_source(e));
                }
            }
        }
        Ok(())
    }

    fn revoked(&mut self) -> bool {
        self.take_rebalances();
        std::mem::take(&mut self.revoked_since)
    }

    async fn commit(&mut self) -> Result<(), SourceError> {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => Ok(()),
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => Ok(()),
            Err(e) => Err(SourceError::transient("kafka commit failed").with_source(e)),
        }
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        self.consumer.unsubscribe();
        Ok(())
    }
}
