//! Kafka → memory + Redis → PostgreSQL: the real pipeline with the PostgreSQL sink, against the
//! real services.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{KAFKA, PG_URL, REDIS_URL, drop_tables, pg, require, scalar, unique};
use delivery_pipeline::produce::{ProduceOptions, ensure_topic, produce, producer};
use dp_assembly::{Config, PipelineBuilder};
use example_postgres_sink::PostgresSink;
use futures::TryStreamExt as _;

const EVENTS: u64 = 2_000;

/// Write-ahead keys of `instance` under the default `msg` prefix.
async fn redis_keys(instance: &str) -> usize {
    use fred::prelude::ClientLike as _;
    let c = fred::prelude::Client::new(
        fred::prelude::Config::from_url(REDIS_URL).expect("redis url"),
        None,
        None,
        None,
    );
    c.init().await.expect("redis connection");
    let keys: Vec<fred::prelude::Key> = c
        .scan_buffered(format!("msg:buffer:{instance}:*"), Some(1000), None)
        .try_collect()
        .await
        .expect("scan");
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_events_from_kafka_become_two_thousand_postgres_rows() {
    require(&["postgres", "kafka", "redis"]);
    let table = unique("pg_e2e");
    let name = table.replace('_', "-");
    let (topic, group, instance) = (format!("t-{name}"), format!("g-{name}"), format!("i-{name}"));

    ensure_topic(KAFKA, &topic, 2).await.expect("create topic");
    let report = produce(
        &producer(KAFKA).expect("producer"),
        &ProduceOptions {
            brokers: KAFKA.into(),
            topic: topic.clone(),
            count: EVENTS,
            rate: None,
            progress: false,
            collect_ids: true,
        },
    )
    .await
    .expect("produce");
    assert_eq!(report.produced, EVENTS);
    let produced: BTreeSet<String> = report.event_ids.into_iter().collect();
    assert_eq!(produced.len() as u64, EVENTS);

    let mut config = Config { instance_id: instance.clone(), ..Config::default() };
    config.kafka.brokers = KAFKA.into();
    config.kafka.topics = vec![topic.clone()];
    config.kafka.group_id = group;
    config.kafka.session_timeout = Duration::from_secs(6);
    config.kafka.revocation_timeout = Duration::from_secs(3);
    config.buffer.max_rows = 500;
    config.buffer.flush_interval = Duration::from_secs(1);
    config.shutdown_timeout = Duration::from_secs(20);
    let sink = PostgresSink::connect(PG_URL, &table).await.expect("connect");
    let pipeline = PipelineBuilder::new(config).sink(Arc::new(sink)).build().await.expect("build pipeline");
    let stats = pipeline.stats();

    // Runs until the table holds every event (or a minute passed), then stops the pipeline.
    let count_sql = format!(r#"SELECT COUNT(*) FROM "{table}""#);
    let reader = pg().await;
    let shutdown = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && scalar(&reader, &count_sql).await < EVENTS as i64 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let summary = pipeline.run(shutdown).await.expect("clean run");
    let s = summary.stats;
    assert_eq!(s.inserted, EVENTS, "every event inserted once: {s:?} (live: {:?})", stats.snapshot());
    assert_eq!((s.duplicates, s.dead_lettered), (0, 0), "{s:?}");

    let c = pg().await;
    assert_eq!(scalar(&c, &count_sql).await, EVENTS as i64);
    assert_eq!(
        scalar(&c, &format!(r#"SELECT COUNT(DISTINCT event_id) FROM "{table}""#)).await,
        EVENTS as i64
    );
    let stored: BTreeSet<String> = c
        .query(&format!(r#"SELECT event_id FROM "{table}""#), &[])
        .await
        .expect("event ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, produced, "exactly the produced event ids");
    // Each partition's offsets are all there, once: 0..n without a gap.
    let partitions = c
        .query(
            &format!(
                r#"SELECT kafka_partition, COUNT(*), MIN(kafka_offset), MAX(kafka_offset) FROM "{table}"
                   WHERE kafka_topic = $1 GROUP BY kafka_partition"#
            ),
            &[&topic],
        )
        .await
        .expect("per partition");
    assert_eq!(partitions.len(), 2, "keys spread over both partitions");
    for row in &partitions {
        let (p, n, min, max): (i32, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!((min, max), (0, n - 1), "partition {p}: offsets must be 0..{n} without gaps");
    }
    assert_eq!(
        scalar(&c, &format!(r#"SELECT COUNT(*) FROM "{table}" WHERE tracking_id = payload->>'tracking_id'"#))
            .await,
        EVENTS as i64,
        "columns come from each payload"
    );
    assert_eq!(redis_keys(&instance).await, 0, "no write-ahead keys left for {instance}");
    drop_tables(&table).await;
}
