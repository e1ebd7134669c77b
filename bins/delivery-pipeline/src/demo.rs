//! `delivery-pipeline demo`: the whole path end to end with no Kafka installed.
//!
//! Starts librdkafka's mock cluster (a Kafka-protocol broker inside this process, reachable
//! over TCP on 127.0.0.1), produces synthetic events to it, runs the real pipeline into the
//! configured MariaDB/MySQL and Redis, and reports what happened.

use std::time::{Duration, Instant};

use anyhow::Context;
use dp_assembly::Config;
use dp_buffer_redis::RedisBuffer;
use indicatif::{ProgressBar, ProgressStyle};
use mysql_async::prelude::Queryable;
use rdkafka::mocking::MockCluster;

use crate::produce::{ProduceOptions, produce, producer};

/// Demo parameters.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Events to produce and deliver.
    pub count: u64,
    /// Partitions of the demo topic; `None` sizes them automatically.
    pub partitions: Option<i32>,
}

/// What the demo saw.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Events produced.
    pub produced: u64,
    /// Rows in the demo table afterwards.
    pub rows: u64,
    /// Entries in the demo dead-letter table.
    pub dead_letters: u64,
    /// Batches the pipeline wrote.
    pub batches: u64,
    /// Time from the pipeline's start to its clean stop.
    pub pipeline_time: Duration,
    /// Time from the first record consumed to the clean stop (group join excluded).
    pub delivery_time: Duration,
    /// `msg:buffer:<instance>:*` keys left in Redis.
    pub redis_keys_left: usize,
}

/// Runs the demo with `config`'s MySQL and Redis settings; Kafka is the embedded mock broker,
/// and the table is `demo_delivery_events`, recreated for each run.
pub async fn run(mut config: Config, opts: DemoOptions) -> anyhow::Result<DemoReport> {
    let needed = min_partitions(opts.count);
    let partitions = match opts.partitions {
        None => needed.max(4),
        Some(p) if p < needed => {
            println!(
                "using {needed} partitions instead of {p}: the embedded broker keeps at most {} MiB per partition",
                MOCK_PARTITION_BYTES >> 20
            );
            needed
        }
        Some(p) => p,
    };
    let cluster = MockCluster::new(1).context("cannot start the embedded kafka broker")?;
    let topic = "demo-delivery-events";
    cluster.create_topic(topic, partitions, 1).context("cannot create the demo topic")?;
    let brokers = cluster.bootstrap_servers();
    config.kafka.brokers = brokers.clone();
    // The embedded broker speaks plain text: the configured cluster's TLS and SASL do not apply.
    config.kafka.tls = dp_core::TlsConfig::default();
    config.kafka.sasl = dp_source_kafka::SaslConfig::default();
    config.kafka.topics = vec![topic.into()];
    config.kafka.group_id = format!("demo-{}", uuid::Uuid::now_v7().as_simple());
    config.kafka.session_timeout = Duration::from_secs(6);
    config.kafka.revocation_timeout = Duration::from_secs(3);
    config.mysql.table = "demo_delivery_events".into();
    config.mysql.dead_letter_table = None;
    config.mysql.create_table = true;
    config.validate().map_err(anyhow::Error::msg)?;
    reset_tables(&config).await?;

    println!("embedded kafka broker at {brokers}; topic {topic} with {partitions} partitions");
    let produced = produce(
        &producer(&brokers)?,
        &ProduceOptions {
            brokers: brokers.clone(),
            topic: topic.into(),
            count: opts.count,
            rate: None,
            progress: true,
            collect_ids: false,
        },
    )
    .await?;
    println!(
        "produced {} events of ~{} bytes in {:.1}s",
        produced.produced,
        crate::events::TARGET_SIZE,
        produced.elapsed.as_secs_f64()
    );

    let pipeline = dp_assembly::build(&config).await?;
    let stats = pipeline.stats();
    let bar = ProgressBar::new(produced.produced);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("delivering");
    let (watch, first_consumed) = watch_delivery(stats, produced.produced, bar.clone());
    let summary = pipeline.run(watch).await?;
    let delivery_time = first_consumed.lock().ok().and_then(|f| *f).map_or(summary.elapsed, |t| t.elapsed());
    bar.finish_and_clear();

    let pool = mysql_pool(&config)?;
    let mut conn = pool.get_conn().await?;
    let rows: u64 = conn.query_first("SELECT COUNT(*) FROM demo_delivery_events").await?.unwrap_or(0);
    let dead_letters: u64 =
        conn.query_first("SELECT COUNT(*) FROM demo_delivery_events_dead_letter").await?.unwrap_or(0);
    drop(conn);
    pool.disconnect().await?;
    let buffer = RedisBuffer::connect(&config.redis, &config.instance_id).await?;
    let redis_keys_left = buffer.count_keys().await?;

    Ok(DemoReport {
        produced: produced.produced,
        rows,
        dead_letters,
        batches: summary.stats.batches,
        pipeline_time: summary.elapsed,
        delivery_time,
        redis_keys_left,
    })
}

/// A shutdown future for a pipeline run over a known backlog: completes once `target` records
/// are delivered, or when nothing was delivered for a minute (the report then shows what is
/// missing). Moves `bar` along, and notes when the first record was consumed.
pub(crate) fn watch_delivery(
    stats: std::sync::Arc<dp_pipeline::PipelineStats>,
    target: u64,
    bar: ProgressBar,
) -> (impl std::future::Future<Output = ()> + Send, std::sync::Arc<std::sync::Mutex<Option<Instant>>>) {
    let first = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let first_consumed = std::sync::Arc::clone(&first);
    let watch = async move {
        let (mut last, mut since) = (0, Instant::now());
        loop {
            let s = stats.snapshot();
            bar.set_position(s.delivered());
            if s.consumed > 0
                && let Ok(mut f) = first_consumed.lock()
            {
                f.get_or_insert_with(Instant::now);
            }
            if s.delivered() >= target || since.elapsed() > Duration::from_secs(60) {
                break;
            }
            if s.delivered() != last {
                (last, since) = (s.delivered(), Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    (watch, first)
}

/// librdkafka's mock broker drops a partition's oldest messages beyond 5 MiB or 100,000
/// messages (`rdkafka_mock.c`); the demo keeps each partition well below both.
const MOCK_PARTITION_BYTES: u64 = 5 << 20;

fn min_partitions(count: u64) -> i32 {
    let per_message = crate::events::TARGET_SIZE as u64 + 100; // payload, key, record overhead
    let by_bytes = (count * per_message).div_ceil(MOCK_PARTITION_BYTES * 7 / 10);
    let by_count = count.div_ceil(70_000);
    by_bytes.max(by_count).clamp(1, 1024) as i32
}

/// A pool on `config`'s MySQL, over TCP as configured (never a local socket), with its
/// password file and TLS settings.
pub(crate) fn mysql_pool(config: &Config) -> anyhow::Result<mysql_async::Pool> {
    Ok(mysql_async::Pool::new(config.mysql.opts()?))
}

async fn reset_tables(config: &Config) -> anyhow::Result<()> {
    let pool = mysql_pool(config)?;
    let mut conn =
        pool.get_conn().await.with_context(|| format!("cannot connect to mysql at {}", config.mysql.url))?;
    conn.query_drop("DROP TABLE IF EXISTS demo_delivery_events, demo_delivery_events_dead_letter").await?;
    drop(conn);
    pool.disconnect().await?;
    Ok(())
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let delivery = self.delivery_time.as_secs_f64().max(f64::EPSILON);
        writeln!(f, "events produced        {}", self.produced)?;
        writeln!(f, "rows in MySQL          {}  (table demo_delivery_events)", self.rows)?;
        writeln!(f, "dead letters           {}", self.dead_letters)?;
        writeln!(f, "batches                {}", self.batches)?;
        writeln!(
            f,
            "pipeline time          {:.1}s (includes joining the consumer group)",
            self.pipeline_time.as_secs_f64()
        )?;
        writeln!(f, "delivery time          {delivery:.1}s (first record consumed to last batch committed)")?;
        writeln!(f, "rows/s                 {:.0}  (over the delivery time)", self.rows as f64 / delivery)?;
        write!(f, "Redis keys left        {}", self.redis_keys_left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_stay_within_the_mock_brokers_retention() {
        assert_eq!(min_partitions(1_000), 1);
        for count in [20_000u64, 100_000, 1_000_000] {
            let p = min_partitions(count) as u64;
            assert!(count * 600 / p < MOCK_PARTITION_BYTES, "{count} events over {p} partitions");
            assert!(count / p < 100_000);
        }
    }
}
