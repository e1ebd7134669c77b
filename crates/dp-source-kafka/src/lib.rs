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
//! The consumer is polled on a thread of its own (`poller.rs`), which hands records over in
//! chunks and runs the rebalance callback. That callback may block, so revocation is a
//! hand-over: the revoked partitions stop being read, the pipeline flushes what it holds of
//! them, the source acknowledges it, and only then (or after `revocation_timeout`) are the
//! offsets committed and the partitions released. A batch that completes later, for a partition
//! this member no longer owns, is never committed by it (it is fenced); the offset watermark in
//! the sink keeps the next owner from storing it twice.
//!
//! While the pipeline is behind (it takes no records), the thread pauses the assigned partitions
//! and goes on polling, so the member stays in the group however long the sink is down.

mod config;
mod dead_letters;
mod poller;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dp_core::{Health, OffsetTracker, Record, Source, SourceError, Watermarks};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use poller::{Event, PollerContext, Shared};

pub use config::{KafkaSourceConfig, Properties, SaslConfig, SaslMechanism, is_topic_name};
pub use dead_letters::{KafkaDeadLetters, dead_letter_topic};
pub use dp_core::string_or_list;

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
    /// A dead-letter topic is missing and could not be created.
    #[error(
        "dead_letter.kafka_topic: cannot create topic {topic}: {reason} (create it, or let this client create topics)"
    )]
    DeadLetterTopic {
        /// The dead-letter topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
    /// The brokers did not answer a metadata request.
    #[error("kafka.brokers: {brokers} did not answer within {timeout:?}: {source} ({hint})")]
    Unreachable {
        /// The configured bootstrap servers.
        brokers: String,
        /// How long we waited.
        timeout: Duration,
        /// The client's error (boxed: it is large, and this error is rare).
        source: Box<KafkaError>,
        /// What to check: the last TLS or SASL failure librdkafka reported, or whether a
        /// broker runs there.
        hint: String,
    },
    /// A setting that names a file (a password, a certificate) could not be used; the message
    /// names the setting.
    #[error("{0}")]
    Setting(String),
}

/// Keeps the last error librdkafka reported (a TLS handshake or SASL failure is only reported
/// there), so a failed check can say why.
#[derive(Default)]
pub(crate) struct LastError(std::sync::Mutex<Option<String>>);

impl LastError {
    pub(crate) fn take(&self) -> Option<String> {
        self.0.lock().ok().and_then(|mut e| e.take())
    }
}

impl LastError {
    fn keep(&self, reason: &str) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(reason.to_owned());
        }
    }
}

impl rdkafka::ClientContext for LastError {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        // TLS handshake and SASL failures arrive here, from librdkafka's own threads.
        if matches!(level, L::Emerg | L::Alert | L::Critical | L::Error | L::Warning) {
            self.keep(log_message);
        }
        rdkafka::ClientContext::log(&rdkafka::client::DefaultClientContext, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "librdkafka error");
        self.keep(reason);
    }
}

impl rdkafka::consumer::ConsumerContext for LastError {}

/// What to check after the brokers did not answer, from the last error librdkafka reported.
pub(crate) fn hint(last: Option<&str>) -> String {
    let Some(last) = last else { return "is a broker running there?".to_owned() };
    if let Some(explained) = dp_core::explain_tls_error(last, "kafka.tls") {
        return format!("{explained}; librdkafka: {last}");
    }
    let l = last.to_ascii_lowercase();
    if l.contains("sasl") && (l.contains("authentication") || l.contains("auth")) {
        return format!(
            "the brokers refused the SASL login: check kafka.sasl.mechanism, username and password; librdkafka: {last}"
        );
    }
    format!("is a broker running there? librdkafka: {last}")
}

/// What the consumer knows of its own health, readable while the source runs elsewhere.
#[derive(Clone)]
pub struct KafkaHealth(Arc<Shared>);

impl KafkaHealth {
    /// False once librdkafka's statistics show no broker connection up (it reports every
    /// `statistics.interval.ms`, 5 s unless overridden in `properties`).
    pub fn brokers_reachable(&self) -> bool {
        self.0.reachable.load(std::sync::atomic::Ordering::Acquire)
    }

    /// True while the partitions are paused because the pipeline takes no records.
    pub fn paused(&self) -> bool {
        self.0.paused.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Health for KafkaHealth {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.brokers_reachable() {
            problems.push("kafka: no broker connection is up".to_owned());
        }
        if self.paused() {
            problems.push("kafka: partitions paused, the pipeline is not taking records".to_owned());
        }
        problems
    }
}

/// A Kafka consumer-group member implementing [`Source`].
pub struct KafkaSource {
    consumer: Arc<BaseConsumer<PollerContext>>,
    shared: Arc<Shared>,
    events: UnboundedReceiver<Event>,
    /// The polling thread; started by the first [`poll`](Source::poll).
    thread: Option<std::thread::JoinHandle<()>>,
    tracker: OffsetTracker,
    /// Records taken from the thread and not yet returned by `poll` (so not yet registered).
    pending: VecDeque<Record>,
    linger: Duration,
    /// A revocation in progress: its generation and partitions.
    revoking: Option<(u64, Vec<(String, i32)>)>,
    /// Partitions were revoked since [`Source::revoked`] was last asked.
    revoked_since: bool,
}

impl KafkaSource {
    /// Creates the consumer and subscribes to the configured topics. Joining the group happens
    /// once the first [`poll`](Source::poll) starts the polling thread.
    pub fn new(config: &KafkaSourceConfig) -> Result<Self, KafkaSourceError> {
        Self::for_batches(config, 1000)
    }

    /// [`KafkaSource::new`] for a pipeline that writes batches of `batch_rows`
    /// (`buffer.max_rows`): librdkafka's prefetch is sized from it
    /// ([`KafkaSourceConfig::client_config_for`]).
    pub fn for_batches(config: &KafkaSourceConfig, batch_rows: usize) -> Result<Self, KafkaSourceError> {
        let shared = Arc::new(Shared::new(config.revocation_timeout));
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let context = PollerContext { shared: Arc::clone(&shared), events: tx };
        let consumer: BaseConsumer<PollerContext> = config
            .client_config_for(batch_rows)
            .map_err(KafkaSourceError::Setting)?
            .create_with_context(context)
            .map_err(|source| KafkaSourceError::Create { brokers: config.brokers.clone(), source })?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| KafkaSourceError::Subscribe { topics: config.topics.clone(), source })?;
        Ok(Self {
            consumer: Arc::new(consumer),
            shared,
            events,
            thread: None,
            tracker: OffsetTracker::new(),
            pending: VecDeque::new(),
            linger: config.poll_linger,
            revoking: None,
            revoked_since: false,
        })
    }

    /// Starts each newly assigned partition at the larger of Kafka's committed offset and the
    /// watermark `store` reports, so records already stored are not read again even when the
    /// Kafka commit was lost. Call before the first poll.
    pub fn with_watermarks(self, store: Arc<dyn Watermarks>) -> Self {
        if self.shared.watermarks.set(store).is_err() {
            tracing::warn!("watermark store already set; keeping the first one");
        }
        self
    }

    /// Asks the brokers for metadata, to check they answer.
    pub async fn check_connection(
        config: &KafkaSourceConfig,
        timeout: Duration,
    ) -> Result<(), KafkaSourceError> {
        let consumer: BaseConsumer<LastError> = config
            .client_config()
            .map_err(KafkaSourceError::Setting)?
            .create_with_context(LastError::default())
            .map_err(|source| KafkaSourceError::Create { brokers: config.brokers.clone(), source })?;
        let brokers = config.brokers.clone();
        let (result, last) = tokio::task::spawn_blocking(move || {
            let result = consumer.fetch_metadata(None, timeout).map(|_| ());
            if result.is_err() {
                // Serves the error callback, should the cause be reported only there.
                let _ = consumer.poll(Duration::from_millis(100));
            }
            (result, consumer.context().take())
        })
        .await
        .unwrap_or((Err(KafkaError::Canceled), None));
        result.map_err(|source| KafkaSourceError::Unreachable {
            brokers,
            timeout,
            source: Box::new(source),
            hint: hint(last.as_deref()),
        })
    }

    /// A handle on the consumer's health (broker reachability, pause state).
    pub fn health(&self) -> KafkaHealth {
        KafkaHealth(Arc::clone(&self.shared))
    }

    /// Records handed out and not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.tracker.pending()
    }

    fn start_thread(&mut self) -> Result<(), SourceError> {
        if self.thread.is_some() {
            return Ok(());
        }
        // The rebalance callback reads watermarks through the runtime `poll` runs on.
        let _ = self.shared.runtime.set(tokio::runtime::Handle::current());
        let consumer = Arc::clone(&self.consumer);
        let thread = std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || poller::run(consumer))
            .map_err(|e| SourceError::permanent("cannot start the kafka consumer thread").with_source(e))?;
        self.thread = Some(thread);
        Ok(())
    }

    /// Handles one event from the thread. Returns true when `poll` should return at once.
    fn handle(&mut self, event: Event) -> Result<bool, SourceError> {
        match event {
            Event::Records(records) => {
                self.shared.taken(records.len());
                self.pending.extend(records);
                Ok(false)
            }
            Event::Revoking { generation, partitions } => {
                // Taken from the thread but not handed out: the next owner reads them.
                self.pending.retain(|r| !partitions.iter().any(|(t, p)| *t == *r.topic && *p == r.partition));
                self.revoking = Some((generation, partitions));
                self.revoked_since = true;
                self.settle();
                Ok(true)
            }
            Event::Revoked(partitions) => {
                self.pending.retain(|r| !partitions.iter().any(|(t, p)| *t == *r.topic && *p == r.partition));
                for (topic, partition) in &partitions {
                    self.tracker.forget(topic, *partition);
                }
                if self.revoking.as_ref().is_some_and(|(_, p)| *p == partitions) {
                    self.revoking = None;
                }
                Ok(false)
            }
            Event::Stopped => {
                Err(SourceError::permanent("the kafka consumer thread stopped; see the error logged before"))
            }
            Event::Error(e) => {
                self.shared.error_taken();
                if self.pending.is_empty() {
                    return Err(SourceError::transient("kafka consumer error").with_source(e));
                }
                tracing::warn!(error = %e, "kafka consumer error");
                Ok(true)
            }
        }
    }

    /// Tells a revocation in progress that its partitions are settled, once nothing handed out
    /// of them is waiting for delivery.
    fn settle(&self) {
        if let Some((generation, partitions)) = &self.revoking
            && partitions.iter().all(|(t, p)| self.tracker.settled(t, *p))
        {
            self.shared.settle(*generation);
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // The thread leaves the group and ends; the consumer closes with the last reference.
        self.shared.request_stop();
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn poll(&mut self, max: usize) -> Result<Vec<Record>, SourceError> {
        self.start_thread()?;
        let max = max.max(1);
        let mut deadline = (!self.pending.is_empty()).then(|| Instant::now() + self.linger);
        // Every event is applied to `self` before the next await point, so a cancelled call
        // loses nothing: the next call returns it.
        while self.pending.len() < max {
            let event = match deadline {
                None => self.events.recv().await,
                Some(d) => match tokio::time::timeout_at(d, self.events.recv()).await {
                    Ok(event) => event,
                    Err(_) => break,
                },
            };
            let Some(event) = event else {
                return Err(SourceError::permanent("the kafka consumer thread stopped"));
            };
            if self.handle(event)? {
                break;
            }
            if !self.pending.is_empty() {
                deadline.get_or_insert_with(|| Instant::now() + self.linger);
            }
        }
        let n = self.pending.len().min(max);
        let out: Vec<Record> = self.pending.drain(..n).collect();
        self.tracker.register_records(&out);
        Ok(out)
    }

    fn acknowledge(&mut self, delivered: &[Record]) -> Result<(), SourceError> {
        self.tracker.acknowledge_records(delivered);
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
        self.settle();
        Ok(())
    }

    fn revoked(&mut self) -> bool {
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
        self.shared.request_stop();
        let Some(thread) = self.thread.take() else { return Ok(()) };
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SourceError::permanent("the kafka consumer thread panicked")),
            Err(e) => Err(SourceError::permanent("cannot wait for the kafka consumer thread").with_source(e)),
        }
    }

    fn health(&self) -> Option<Arc<dyn Health>> {
        Some(Arc::new(KafkaSource::health(self)))
    }
}
