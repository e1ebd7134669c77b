//! The load generator: writes synthetic delivery events to a topic at a given rate and count.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dp_source_kafka::KafkaSourceConfig;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::events::synthetic_event;

/// What to produce.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// Bootstrap servers.
    pub brokers: String,
    /// Target topic.
    pub topic: String,
    /// Events to write.
    pub count: u64,
    /// Events per second; `None` for as fast as the broker takes them.
    pub rate: Option<u64>,
    /// Show a progress bar (hidden automatically when stderr is not a terminal).
    pub progress: bool,
    /// Keep the generated `event_id`s in the report (for tests).
    pub collect_ids: bool,
}

/// What was produced.
#[derive(Debug, Default)]
pub struct ProduceReport {
    /// Events acknowledged by the broker.
    pub produced: u64,
    /// Their `event_id`s, when asked for.
    pub event_ids: Vec<String>,
    /// Wall time.
    pub elapsed: Duration,
}

/// A producer tuned for throughput (large batches, a short linger) to plain-text `brokers`.
pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    producer_for(&plain(brokers))
}

/// A producer tuned for throughput to the cluster `kafka` configures: its brokers, and the
/// same `properties`, TLS and SASL settings as the pipeline's consumer.
pub fn producer_for(kafka: &KafkaSourceConfig) -> anyhow::Result<FutureProducer> {
    client_config(kafka)?
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "60000")
        .create()
        .with_context(|| format!("cannot create a kafka producer for {}", kafka.brokers))
}

/// Creates `topic` on plain-text `brokers` with `partitions` partitions unless it exists.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    ensure_topic_for(&plain(brokers), topic, partitions).await
}

/// The default settings with `brokers`: no TLS, no SASL.
fn plain(brokers: &str) -> KafkaSourceConfig {
    KafkaSourceConfig { brokers: brokers.to_owned(), ..KafkaSourceConfig::default() }
}

fn client_config(kafka: &KafkaSourceConfig) -> anyhow::Result<ClientConfig> {
    kafka.common_client_config().map_err(anyhow::Error::msg)
}

/// Creates `topic` on the cluster `kafka` configures (its security settings included) with
/// `partitions` partitions unless it exists.
pub async fn ensure_topic_for(kafka: &KafkaSourceConfig, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<_> = client_config(kafka)?
        .create()
        .with_context(|| format!("cannot create a kafka admin client for {}", kafka.brokers))?;
    let opts = AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_secs(10))));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin.create_topics([&new], &opts).await.context("create topic request failed")?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => bail!("cannot create topic {t}: {code}"),
        }
    }
    Ok(())
}

/// Produces `opts.count` events and waits until the broker acknowledged every one.
pub async fn produce(producer: &FutureProducer, opts: &ProduceOptions) -> anyhow::Result<ProduceReport> {
    let started = Instant::now();
    let bar = if opts.progress { ProgressBar::new(opts.count) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("producing");
    // A Send rng: the future may move between threads.
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let mut in_flight: VecDeque<DeliveryFuture> = VecDeque::new();
    let mut report = ProduceReport::default();
    let settle = |report: &mut ProduceReport, result: Result<_, _>| -> anyhow::Result<()> {
        match result {
            Ok(Ok(_)) => {
                report.produced += 1;
                bar.inc(1);
                Ok(())
            }
            Ok(Err((e, _))) => bail!("the broker refused an event: {e}"),
            Err(_) => bail!("the producer was dropped before an event was acknowledged"),
        }
    };
    for seq in 0..opts.count {
        if let Some(rate) = opts.rate.filter(|r| *r > 0) {
            let due = started + Duration::from_secs_f64(seq as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let event = synthetic_event(seq, &mut rng);
        let mut record = FutureRecord::to(&opts.topic).key(&event.key).payload(&event.payload);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    let oldest =
                        in_flight.pop_front().context("producer queue full with nothing in flight")?;
                    settle(&mut report, oldest.await)?;
                }
                Err((e, _)) => bail!("cannot enqueue an event: {e}"),
            }
        }
        if opts.collect_ids {
            report.event_ids.push(event.event_id);
        }
        while in_flight.len() > 50_000 {
            let oldest = in_flight.pop_front().context("in-flight queue unexpectedly empty")?;
            settle(&mut report, oldest.await)?;
        }
    }
    while let Some(d) = in_flight.pop_front() {
        settle(&mut report, d.await)?;
    }
    bar.finish_and_clear();
    report.elapsed = started.elapsed();
    Ok(report)
}
