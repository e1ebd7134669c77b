//! `delivery-pipeline bench`: the end-to-end benchmark, in one run on the configured services.
//!
//! 1. pre-produces N synthetic ~500-byte events to a fresh topic;
//! 2. measures Redis memory per buffered message, plain and compressed;
//! 3. then, `--repeat` times (3 by default; the report gives medians, these machines being
//!    noisy):
//!    - **MySQL alone**, the ceiling: the same rows in a fresh copy of the table, the sink's own
//!      1000-row prepared statement, one transaction each, every parameter built before the
//!      clock starts;
//!    - **the sink alone**: `MysqlSink::write_batch` on 1000-record batches (mapping, statement
//!      building and the transaction), without Kafka or Redis;
//!    - **the column mapping alone**, records/s on one core;
//!    - **the naive baseline**: one autocommit `INSERT` per message, on a sample;
//!    - **the real pipeline** (Redis backup, idempotent inserts, offset watermark, default
//!      batches) from the backlog until every event is stored, with a consumer group of its own;
//!
//! then prints a table (medians, ratios against MySQL alone, and every repetition) and writes
//! `target/bench/e2e.json`. Each measure's table is dropped as soon as it is measured, so every
//! measure starts from the same free buffer pool; the topic stays.
//!
//! The pipeline runs as a process of its own (`delivery-pipeline run`, started by the benchmark
//! with a settings file under `target/bench/`), so the CPU time and memory reported are the
//! pipeline's alone, not the producer's or the other phases'. Progress is read from the
//! pipeline's offset watermark (a few rows), not by counting the table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use dp_assembly::Config;
use dp_buffer_redis::RedisBuffer;
use dp_core::{Buffer, Record, Sink};
use dp_sink_mysql::MysqlSink;
use fred::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use mysql_async::prelude::Queryable;
use rand::SeedableRng;

use crate::demo::mysql_pool;
use crate::events::synthetic_event;
use crate::produce::{ProduceOptions, ensure_topic_for, produce, producer_for};

/// Benchmark parameters.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Events produced and delivered end to end (and written for the ceilings).
    pub count: u64,
    /// Partitions of the fresh topic.
    pub partitions: i32,
    /// Messages in the naive one-insert-per-message sample.
    pub naive_sample: u64,
    /// How many times each measure is taken; the report gives medians.
    pub repeat: u32,
}

/// One repetition's measures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Repetition {
    /// MySQL alone: rows/s of pre-built 1000-row statements, the timed loop doing nothing but
    /// the round trips (`BEGIN`, the prepared multi-row insert, `COMMIT`).
    pub mysql_alone_rows_per_s: f64,
    /// The sink's own throughput: rows/s of `MysqlSink::write_batch` on 1000-record batches
    /// (mapping, statement building, the watermark-free transaction), without Kafka or Redis.
    pub sink_rows_per_s: f64,
    /// The column mapping alone: records/s of `ColumnMapping::map` on one core.
    pub mapping_records_per_s: f64,
    /// Naive baseline: rows/s of one autocommit INSERT per message.
    pub naive_rows_per_s: f64,
    /// End to end: rows/s from the first batch committed to the last.
    pub end_to_end_rows_per_s: f64,
    /// CPU seconds of the pipeline process per 100,000 rows, its startup included.
    pub cpu_seconds_per_100k: f64,
    /// Highest resident set size of the pipeline process, MiB.
    pub peak_rss_mib: f64,
    /// What the pipeline's per-batch timeline shows about MySQL's time.
    pub timeline: Timeline,
}

/// The end-to-end run read from the pipeline's per-batch timeline (`dp_pipeline::timeline` at
/// debug, in its log), leaving out the first and last five batches (start-up and drain).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Timeline {
    /// Batches in the timeline.
    pub batches: usize,
    /// Share of the span in which a batch was being written (its turn came, the sink had not
    /// returned): how busy the pipeline kept MySQL.
    pub mysql_busy: f64,
    /// Share of the span in which MySQL waited for the pipeline: the batch before was written
    /// and the next one was not handed over yet.
    pub mysql_waiting_for_pipeline: f64,
    /// Median ms from a batch's turn to its commit (the sink's transaction).
    pub write_ms: f64,
    /// Median ms a batch was handed over before its turn (prepared while the one before was
    /// written).
    pub handed_ahead_ms: f64,
    /// Median ms from a commit to the write-ahead copies removed.
    pub remove_ms: f64,
    /// Median records per poll.
    pub poll_records: f64,
    /// Median ms to store a poll's write-ahead copies.
    pub append_ms: f64,
}

impl Timeline {
    /// Reads the `poll` and `batch` events of a pipeline log.
    fn of_log(log: &str) -> Self {
        let fields = |line: &str| -> std::collections::HashMap<String, f64> {
            line.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k.to_owned(), v.trim_matches('"').parse().ok()?)))
                .collect()
        };
        let mut polls = Vec::new();
        let mut batches = Vec::new();
        for line in log.lines().filter(|l| l.contains(dp_pipeline::metrics::TIMELINE)) {
            let f = fields(line);
            let get = |k: &str| f.get(k).copied();
            if let (Some(rows), Some(h), Some(t), Some(w), Some(r)) =
                (get("rows"), get("handed"), get("turn"), get("written"), get("removed"))
            {
                batches.push((rows, h, t, w, r));
            } else if let (Some(n), Some(p), Some(a)) = (get("records"), get("polled"), get("appended")) {
                polls.push((n, p, a));
            }
        }
        // Each batch is logged once its keys are removed, which may come after the next one's.
        batches.sort_by(|a, b| a.2.total_cmp(&b.2));
        let steady = if batches.len() > 10 { &batches[5..batches.len() - 5] } else { &batches[..] };
        let (Some(first), Some(last)) = (steady.first(), steady.last()) else { return Self::default() };
        let span = (last.3 - first.2).max(1.0);
        let busy: f64 = steady.iter().map(|b| b.3 - b.2).sum();
        let waiting: f64 = steady.windows(2).map(|w| (w[1].1 - w[0].3).max(0.0)).sum();
        let ms = |v: Vec<f64>| median(v) / 1000.0;
        Self {
            batches: steady.len(),
            mysql_busy: busy / span,
            mysql_waiting_for_pipeline: waiting / span,
            write_ms: ms(steady.iter().map(|b| b.3 - b.2).collect()),
            handed_ahead_ms: ms(steady.iter().map(|b| b.2 - b.1).collect()),
            remove_ms: ms(steady.iter().map(|b| b.4 - b.3).collect()),
            poll_records: median(polls.iter().map(|p| p.0).collect()),
            append_ms: ms(polls.iter().map(|p| p.2 - p.1).collect()),
        }
    }
}

/// What one run measured. Written as `target/bench/e2e.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Events in the run.
    pub events: u64,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Repetitions of every measure; the figures below are their medians.
    pub repeat: u32,
    /// Median: MySQL alone, the ceiling (see [`Repetition::mysql_alone_rows_per_s`]).
    pub mysql_alone_rows_per_s: f64,
    /// Median: the sink's own throughput (see [`Repetition::sink_rows_per_s`]).
    pub sink_rows_per_s: f64,
    /// Median: the column mapping alone, records/s on one core.
    pub mapping_records_per_s: f64,
    /// Median: naive baseline, rows/s of one autocommit INSERT per message.
    pub naive_rows_per_s: f64,
    /// Rows in the naive sample.
    pub naive_sample: u64,
    /// Median: end to end, rows/s from the first batch committed to the last.
    pub end_to_end_rows_per_s: f64,
    /// `end_to_end_rows_per_s / mysql_alone_rows_per_s`, medians of the same run.
    pub ratio_to_mysql_alone: f64,
    /// `sink_rows_per_s / mysql_alone_rows_per_s`.
    pub sink_ratio_to_mysql_alone: f64,
    /// `end_to_end_rows_per_s / naive_rows_per_s`.
    pub ratio_to_naive: f64,
    /// Rows stored by the pipeline in each repetition (each must equal `events`).
    pub rows_stored: u64,
    /// Kafka timestamp to MySQL `ingested_at`, milliseconds, of the last repetition. In this
    /// backlog run it includes the time a message waited in Kafka before the pipeline started.
    pub latency_ms_p50: f64,
    /// See `latency_ms_p50`.
    pub latency_ms_p99: f64,
    /// See `latency_ms_p50`.
    pub latency_ms_max: f64,
    /// Median: CPU seconds (user + system) of the pipeline process per 100,000 rows, its
    /// startup included.
    pub cpu_seconds_per_100k: f64,
    /// Median: highest resident set size of the pipeline process (`VmHWM`), MiB.
    pub peak_rss_mib: f64,
    /// Resident set size of the pipeline process every second from its start (its Kafka group
    /// join included), MiB, in the last repetition.
    pub rss_mib_over_time: Vec<f64>,
    /// Median of the repetitions: the share of the end-to-end span in which MySQL was writing a
    /// batch ([`Timeline::mysql_busy`]).
    pub mysql_busy: f64,
    /// Median of the repetitions: the share in which MySQL waited for the pipeline.
    pub mysql_waiting_for_pipeline: f64,
    /// The last repetition's timeline, stage by stage.
    pub timeline: Timeline,
    /// Redis `used_memory` growth per buffered message (10,000 of these events appended).
    pub redis_bytes_per_message: f64,
    /// The same with `redis.compression = "zstd"`.
    pub redis_bytes_per_message_zstd: f64,
    /// The same with `redis.compression = "zstd-dictionary"`, once its dictionary is trained
    /// (on 2,000 other events, appended first).
    pub redis_bytes_per_message_zstd_dictionary: f64,
    /// The compression the pipeline run used.
    pub redis_compression: dp_buffer_redis::Compression,
    /// MySQL statements (`Questions`) per 1000 messages during the last pipeline run.
    pub mysql_statements_per_1000: f64,
    /// Redis commands per 1000 messages during the last pipeline run.
    pub redis_commands_per_1000: f64,
    /// CPU seconds per 100,000 rows of each service on this machine (the MySQL server, Redis,
    /// the Kafka broker) from the pipeline's start to its last row, in the last repetition.
    pub service_cpu_seconds_per_100k: std::collections::BTreeMap<String, f64>,
    /// The cores this machine has, for reading the CPU figures.
    pub cores: usize,
    /// Every repetition's measures, in order.
    pub repetitions: Vec<Repetition>,
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Runs the benchmark against `config`'s Kafka, MySQL and Redis.
pub async fn run(config: Config, opts: BenchOptions) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(opts.count >= 1000, "--count must be at least 1000");
    anyhow::ensure!(opts.repeat >= 1, "--repeat must be at least 1");
    let id = run_id();
    let id = id.as_str();
    let topic = format!("bench-{id}");
    let brokers = config.kafka.brokers.clone();

    step(&format!("producing {} events to {topic} ({} partitions)", opts.count, opts.partitions));
    ensure_topic_for(&config.kafka, &topic, opts.partitions).await?;
    let produced = produce(
        &producer_for(&config.kafka)?,
        &ProduceOptions {
            brokers: brokers.clone(),
            topic: topic.clone(),
            count: opts.count,
            rate: None,
            progress: true,
            collect_ids: false,
        },
    )
    .await?;
    anyhow::ensure!(produced.produced == opts.count, "produced only {} events", produced.produced);

    use dp_buffer_redis::Compression;
    step("Redis memory per buffered message (10,000 appended: plain, zstd, zstd with a dictionary)");
    let redis_bytes_per_message_zstd_dictionary =
        redis_bytes_per_message(&config, id, &topic, Compression::ZstdDictionary).await?;
    let redis_bytes_per_message_zstd =
        redis_bytes_per_message(&config, id, &topic, Compression::Zstd).await?;
    let redis_bytes_per_message = redis_bytes_per_message(&config, id, &topic, Compression::None).await?;

    let mut repetitions = Vec::new();
    let mut last = None;
    for rep in 1..=opts.repeat {
        let of = |what: &str| step(&format!("[{rep}/{}] {what}", opts.repeat));
        of("MySQL alone (pre-built 1000-row statements, round trips only)");
        let alone_table = format!("bench_alone_{id}_{rep}");
        let mysql_alone_rows_per_s = mysql_alone(&config, &alone_table, &topic, opts).await?;
        // Dropped at once, so every measure writes into a buffer pool as free as this one did
        // (a backlog fills MariaDB's default pool; docs/PERFORMANCE.md, the evening's results).
        drop_table(&config, &alone_table).await?;
        println!("    {mysql_alone_rows_per_s:.0} rows/s");
        of("the sink alone (1000-record batches through MysqlSink::write_batch)");
        let sink_table = format!("bench_sink_{id}_{rep}");
        let sink_rows_per_s = sink_alone(&config, &sink_table, &topic, opts).await?;
        drop_table(&config, &sink_table).await?;
        println!("    {sink_rows_per_s:.0} rows/s");
        of("the column mapping alone (one core)");
        let mapping_records_per_s = mapping_alone(&config, &topic, opts)?;
        println!("    {mapping_records_per_s:.0} records/s");
        of(&format!("naive baseline (one autocommit INSERT per message, {} messages)", opts.naive_sample));
        let naive_table = format!("bench_naive_{id}_{rep}");
        let naive_rows_per_s = naive(&config, &naive_table, &topic, opts.naive_sample).await?;
        drop_table(&config, &naive_table).await?;
        println!("    {naive_rows_per_s:.0} rows/s");
        of("the pipeline, from the backlog until every event is stored");
        let pc =
            scratch_config(&config, &topic, &format!("{topic}-r{rep}"), &format!("bench_e2e_{id}_{rep}"));
        let e2e = pipeline_run(&pc, opts.count).await?;
        let latency = latencies(&pc, 0, 0).await?;
        let end_to_end_rows_per_s = e2e.rows as f64 / e2e.delivery.as_secs_f64().max(f64::EPSILON);
        println!("    {end_to_end_rows_per_s:.0} rows/s");
        drop_table(&config, &pc.mysql.table).await?;
        drop_dictionary(&pc).await?;
        repetitions.push(Repetition {
            mysql_alone_rows_per_s,
            sink_rows_per_s,
            mapping_records_per_s,
            naive_rows_per_s,
            end_to_end_rows_per_s,
            cpu_seconds_per_100k: e2e.cpu_seconds * 100_000.0 / opts.count as f64,
            peak_rss_mib: e2e.peak_rss_kib as f64 / 1024.0,
            timeline: e2e.timeline,
        });
        last = Some((e2e, latency));
    }
    let (e2e, latency) = last.context("no repetition ran")?;
    let med = |f: fn(&Repetition) -> f64| median(repetitions.iter().map(f).collect());
    let mysql_alone_rows_per_s = med(|r| r.mysql_alone_rows_per_s);
    let sink_rows_per_s = med(|r| r.sink_rows_per_s);
    let naive_rows_per_s = med(|r| r.naive_rows_per_s);
    let end_to_end_rows_per_s = med(|r| r.end_to_end_rows_per_s);
    let per_1000 = |n: u64| n as f64 * 1000.0 / opts.count as f64;
    let report = BenchReport {
        events: opts.count,
        partitions: opts.partitions,
        repeat: opts.repeat,
        mysql_alone_rows_per_s,
        sink_rows_per_s,
        mapping_records_per_s: med(|r| r.mapping_records_per_s),
        naive_rows_per_s,
        naive_sample: opts.naive_sample,
        end_to_end_rows_per_s,
        ratio_to_mysql_alone: end_to_end_rows_per_s / mysql_alone_rows_per_s,
        sink_ratio_to_mysql_alone: sink_rows_per_s / mysql_alone_rows_per_s,
        ratio_to_naive: end_to_end_rows_per_s / naive_rows_per_s,
        rows_stored: e2e.rows,
        latency_ms_p50: latency.0,
        latency_ms_p99: latency.1,
        latency_ms_max: latency.2,
        cpu_seconds_per_100k: med(|r| r.cpu_seconds_per_100k),
        peak_rss_mib: med(|r| r.peak_rss_mib),
        rss_mib_over_time: e2e.rss_mib_over_time,
        mysql_busy: med(|r| r.timeline.mysql_busy),
        mysql_waiting_for_pipeline: med(|r| r.timeline.mysql_waiting_for_pipeline),
        timeline: e2e.timeline,
        redis_bytes_per_message,
        redis_bytes_per_message_zstd,
        redis_bytes_per_message_zstd_dictionary,
        redis_compression: config.redis.compression,
        mysql_statements_per_1000: per_1000(e2e.mysql_statements),
        redis_commands_per_1000: per_1000(e2e.redis_commands),
        service_cpu_seconds_per_100k: e2e
            .service_cpu_seconds
            .iter()
            .map(|(name, s)| (name.clone(), s * 100_000.0 / opts.count as f64))
            .collect(),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        repetitions,
    };
    write_json("e2e.json", &report)?;
    Ok(report)
}

/// A short id that names one run's topic, group, instance and tables.
fn run_id() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    id[id.len() - 10..].to_owned()
}

/// `config` pointed at a run's own topic, consumer group and instance id (both `group`) and
/// a fresh `table`, so a run never reads or writes anything of another.
fn scratch_config(config: &Config, topic: &str, group: &str, table: &str) -> Config {
    let mut c = config.clone();
    c.instance_id = group.to_owned();
    c.kafka.topics = vec![topic.to_owned()];
    c.kafka.group_id = group.to_owned();
    c.mysql.table = table.to_owned();
    c.mysql.dead_letter_table = None;
    c.mysql.create_table = true;
    if c.redis.compression == dp_buffer_redis::Compression::ZstdDictionary {
        // A key prefix of the run's own: the dictionary it trains on synthetic events is deleted
        // afterwards (`drop_dictionary`), and must never be one the user's instances take up.
        c.redis.key_prefix = format!("{}-{group}", c.redis.key_prefix);
    }
    c
}

/// Deletes the dictionary a `zstd-dictionary` run trained under its own prefix
/// (`scratch_config`), if it trained one.
async fn drop_dictionary(config: &Config) -> anyhow::Result<()> {
    if config.redis.compression != dp_buffer_redis::Compression::ZstdDictionary {
        return Ok(());
    }
    let buffer = RedisBuffer::connect(&config.redis, &format!("{}-cleanup", config.instance_id)).await?;
    delete_dictionary(&buffer).await?;
    buffer.close().await?;
    Ok(())
}

/// Deletes `<prefix>:dictionary` and the dictionary it names, if `buffer` uses one: one `DEL`
/// each, as the two keys may sit in different slots of a Redis Cluster.
async fn delete_dictionary(buffer: &RedisBuffer) -> anyhow::Result<()> {
    if let Some(id) = buffer.dictionary_id() {
        for key in [buffer.dictionary_key(id), buffer.current_dictionary_key()] {
            let _: () = buffer.client().del(key).await?;
        }
    }
    Ok(())
}

/// `config`'s MySQL settings pointed at a fresh `table` of the run's own, created on connect.
fn scratch_table(config: &Config, table: &str) -> dp_sink_mysql::MysqlSinkConfig {
    let mut mc = config.mysql.clone();
    mc.table = table.to_owned();
    mc.dead_letter_table = None;
    mc.create_table = true;
    mc
}

/// Writes `report` as `target/bench/<name>`.
fn write_json(name: &str, report: &impl serde::Serialize) -> anyhow::Result<()> {
    let dir = std::path::Path::new("target/bench");
    std::fs::create_dir_all(dir).context("cannot create target/bench")?;
    std::fs::write(dir.join(name), serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("cannot write target/bench/{name}"))
}

fn step(what: &str) {
    println!("{what}");
}

fn bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("    [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// The records the benchmark writes without Kafka: the same synthetic events, numbered as if
/// they had been spread over the partitions.
fn records(
    topic: &Arc<str>,
    from: u64,
    n: u64,
    partitions: i32,
    rng: &mut rand::rngs::StdRng,
) -> Vec<Record> {
    (from..from + n)
        .map(|seq| {
            let event = synthetic_event(seq, rng);
            let p = i64::from(partitions.max(1));
            let mut r =
                Record::new(Arc::clone(topic), (seq as i64 % p) as i32, seq as i64 / p, Some(event.payload));
            r.timestamp_ms = Some(dp_core::unix_millis());
            r
        })
        .collect()
}

/// The ceiling of MySQL alone: the same table (the sink creates it, same DDL and keys), the
/// same statement (the sink's 1000-row prepared multi-row `INSERT … ON DUPLICATE KEY UPDATE`),
/// one transaction per statement; every parameter is built before the clock starts, so the
/// timed loop does nothing but the round trips.
async fn mysql_alone(config: &Config, table: &str, topic: &str, opts: BenchOptions) -> anyhow::Result<f64> {
    let mc = scratch_table(config, table);
    let sink = MysqlSink::connect(&mc).await?;
    let spec = mc.tables().map_err(anyhow::Error::msg)?.into_iter().next().context("no table")?;
    let mut conn = sink.pool().get_conn().await?;
    let version: String = conn.query_first("SELECT VERSION()").await?.unwrap_or_default();
    let syntax = dp_sink_mysql::sql::UpsertSyntax::for_server(&version);
    let topic: Arc<str> = Arc::from(topic);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let now = time::OffsetDateTime::now_utc();
    let bar = bar(opts.count);
    let mut writing = Duration::ZERO;
    let mut seq = 0;
    while seq < opts.count {
        let n = (opts.count - seq).min(1000);
        let mut params = Vec::with_capacity(n as usize * spec.mapping.columns.len());
        for r in records(&topic, seq, n, opts.partitions, &mut rng) {
            params
                .extend(spec.mapping.map(&r, now).map_err(|e| anyhow::anyhow!("{}: {}", e.class, e.reason))?);
        }
        let stmt = conn.prep(spec.mapping.statement(&spec.table, syntax, n as usize)).await?;
        let started = Instant::now();
        let mut tx = conn.start_transaction(mysql_async::TxOpts::default()).await?;
        tx.exec_drop(&stmt, params).await.context("MySQL-alone insert")?;
        tx.commit().await?;
        writing += started.elapsed();
        seq += n;
        bar.inc(n);
    }
    bar.finish_and_clear();
    drop(conn);
    sink.close().await?;
    Ok(opts.count as f64 / writing.as_secs_f64().max(f64::EPSILON))
}

/// The column mapping alone: the built-in table's `ColumnMapping::map` over the same records,
/// on this thread; the records are made before the clock starts.
fn mapping_alone(config: &Config, topic: &str, opts: BenchOptions) -> anyhow::Result<f64> {
    let spec = config.mysql.tables().map_err(anyhow::Error::msg)?.into_iter().next().context("no table")?;
    let topic: Arc<str> = Arc::from(topic);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let now = time::OffsetDateTime::now_utc();
    let mut mapping = Duration::ZERO;
    let mut seq = 0;
    while seq < opts.count {
        let n = (opts.count - seq).min(1000);
        let batch = records(&topic, seq, n, opts.partitions, &mut rng);
        let started = Instant::now();
        for r in &batch {
            std::hint::black_box(spec.mapping.map(std::hint::black_box(r), now).ok());
        }
        mapping += started.elapsed();
        seq += n;
    }
    Ok(opts.count as f64 / mapping.as_secs_f64().max(f64::EPSILON))
}

/// The sink's own throughput: `MysqlSink::write_batch` (mapping, statement building, the
/// transaction) on 1000-record batches, no Kafka or Redis; the records are made before the
/// clock starts.
async fn sink_alone(config: &Config, table: &str, topic: &str, opts: BenchOptions) -> anyhow::Result<f64> {
    let mc = scratch_table(config, table);
    let sink = MysqlSink::connect(&mc).await?;
    let topic: Arc<str> = Arc::from(topic);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let bar = bar(opts.count);
    let mut writing = Duration::ZERO;
    let mut seq = 0;
    while seq < opts.count {
        let n = (opts.count - seq).min(1000);
        let batch = records(&topic, seq, n, opts.partitions, &mut rng);
        let started = Instant::now();
        sink.write_batch(&batch).await.map_err(anyhow::Error::new).context("sink insert")?;
        writing += started.elapsed();
        seq += n;
        bar.inc(n);
    }
    bar.finish_and_clear();
    sink.close().await?;
    Ok(opts.count as f64 / writing.as_secs_f64().max(f64::EPSILON))
}

async fn naive(config: &Config, table: &str, topic: &str, sample: u64) -> anyhow::Result<f64> {
    let mc = scratch_table(config, table);
    let sink = MysqlSink::connect(&mc).await?;
    let mut conn = sink.pool().get_conn().await?;
    let sql = format!(
        "INSERT INTO `{table}` (event_id, tracking_id, status, payload, kafka_topic, kafka_partition, kafka_offset) \
         VALUES (?, ?, ?, ?, ?, ?, ?)"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let bar = bar(sample);
    let started = Instant::now();
    for seq in 0..sample {
        let event = synthetic_event(seq, &mut rng);
        let payload = String::from_utf8(event.payload).context("synthetic events are UTF-8")?;
        conn.exec_drop(&sql, (event.event_id, event.key, "IN_TRANSIT", payload, topic, 0, seq)).await?;
        bar.inc(1);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    drop(conn);
    sink.close().await?;
    Ok(sample as f64 / elapsed.as_secs_f64().max(f64::EPSILON))
}

/// Appends 10,000 records to a Redis buffer of its own and reads `used_memory` around it. With
/// a dictionary, 2,000 other records are appended first, to train it, outside the measure.
async fn redis_bytes_per_message(
    config: &Config,
    id: &str,
    topic: &str,
    compression: dp_buffer_redis::Compression,
) -> anyhow::Result<f64> {
    use dp_buffer_redis::{Compression, TRAINING_RECORDS};
    const N: u64 = 10_000;
    let mut redis = dp_buffer_redis::RedisBufferConfig { compression, ..config.redis.clone() };
    let mut instance = format!("bench-mem-{id}");
    if compression == Compression::ZstdDictionary {
        // A prefix of its own: the dictionary trained here is deleted afterwards, and must never
        // be one the user's instances take up. The instance id is padded so that the keys are as
        // long as the other measures' (a key's length moves Redis's memory per key).
        let prefix = format!("bench-{id}");
        let same_length = (redis.key_prefix.len() + instance.len()).saturating_sub(prefix.len()).max(1);
        instance = "m".repeat(same_length);
        redis.key_prefix = prefix;
    }
    let buffer = RedisBuffer::connect(&redis, &instance).await?;
    let topic: Arc<str> = Arc::from(topic);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut keys = Vec::new();
    if compression == Compression::ZstdDictionary {
        // Other events than the measured ones, which stay those of the other measures.
        let mut other = rand::rngs::StdRng::seed_from_u64(4);
        let training = records(&topic, N, TRAINING_RECORDS as u64, 1, &mut other);
        keys.extend(buffer.append(&training).await?);
        anyhow::ensure!(
            buffer.dictionary_id().is_some(),
            "no dictionary was trained on {TRAINING_RECORDS} events"
        );
    }
    let before = used_memory(buffer.client()).await?;
    for from in (0..N).step_by(1000) {
        keys.extend(buffer.append(&records(&topic, from, 1000, 1, &mut rng)).await?);
    }
    let after = used_memory(buffer.client()).await?;
    buffer.remove(&keys).await?;
    delete_dictionary(&buffer).await?;
    buffer.close().await?;
    Ok(after.saturating_sub(before) as f64 / N as f64)
}

async fn used_memory(client: &Client) -> anyhow::Result<u64> {
    let info: String = client.info(Some(fred::types::InfoKind::Memory)).await?;
    info_field(&info, "used_memory").context("INFO memory has no used_memory")
}

async fn commands_processed(client: &Client) -> anyhow::Result<u64> {
    let info: String = client.info(Some(fred::types::InfoKind::Stats)).await?;
    info_field(&info, "total_commands_processed").context("INFO stats has no total_commands_processed")
}

fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
}

/// CPU seconds (user + system) used so far by the services on this machine, by process name:
/// the MySQL server, Redis and the Kafka broker share the cores with the pipeline.
fn service_cpu() -> std::collections::BTreeMap<String, f64> {
    const SERVICES: &[&str] = &["mariadbd", "mysqld", "redis-server", "tansu", "java"];
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let path = entry.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else { continue };
        let comm = comm.trim();
        if SERVICES.contains(&comm) {
            let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
            *out.entry(comm.to_owned()).or_insert(0.0) += cpu_seconds_of(&stat);
        }
    }
    out
}

struct E2e {
    rows: u64,
    delivery: Duration,
    /// CPU seconds each service used from the pipeline's start to the last row stored.
    service_cpu_seconds: std::collections::BTreeMap<String, f64>,
    cpu_seconds: f64,
    peak_rss_kib: u64,
    rss_mib_over_time: Vec<f64>,
    mysql_statements: u64,
    redis_commands: u64,
    timeline: Timeline,
}

/// Runs the pipeline process over the backlog of `count` events until every one is stored.
async fn pipeline_run(config: &Config, count: u64) -> anyhow::Result<E2e> {
    let mysql = mysql_pool(config)?;
    let mut conn = mysql.get_conn().await?;
    let redis = RedisBuffer::connect(&config.redis, &format!("{}-probe", config.instance_id)).await?;
    let questions_before = questions(&mut conn).await?;
    let commands_before = commands_processed(redis.client()).await?;
    let services_before = service_cpu();
    let mut pipeline = PipelineProcess::spawn(config)?;
    let bar = bar(count);
    let mut progress = Progress::new(config);
    let mut first: Option<Instant> = None;
    let mut rss_mib_over_time = Vec::new();
    let mut next_sample = Instant::now();
    loop {
        let done = progress.delivered(&mut conn).await?;
        if done > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        // From the process's start (its group join included), every second.
        if Instant::now() >= next_sample {
            rss_mib_over_time.push(pipeline.rss_kib() as f64 / 1024.0);
            next_sample += Duration::from_secs(1);
        }
        bar.set_position(done);
        if done >= count {
            break;
        }
        pipeline.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivery = first.map_or(Duration::ZERO, |t| t.elapsed());
    let service_cpu_seconds = service_cpu()
        .into_iter()
        .map(|(name, after)| {
            let before = services_before.get(&name).copied().unwrap_or(0.0);
            (name, (after - before).max(0.0))
        })
        .collect();
    let (cpu_seconds, peak_rss_kib) = (pipeline.cpu_seconds(), pipeline.peak_rss_kib());
    let log = pipeline.log.clone();
    pipeline.stop()?;
    bar.finish_and_clear();
    let timeline = Timeline::of_log(&std::fs::read_to_string(&log).unwrap_or_default());
    let mysql_statements =
        questions(&mut conn).await?.saturating_sub(questions_before).saturating_sub(progress.queries + 1);
    let redis_commands = commands_processed(redis.client()).await?.saturating_sub(commands_before + 1);
    let rows: u64 =
        conn.query_first(format!("SELECT COUNT(*) FROM `{}`", config.mysql.table)).await?.unwrap_or(0);
    drop(conn);
    mysql.disconnect().await?;
    redis.close().await?;
    anyhow::ensure!(rows == count, "the pipeline stored {rows} rows of {count}");
    Ok(E2e {
        rows,
        delivery,
        service_cpu_seconds,
        cpu_seconds,
        peak_rss_kib,
        rss_mib_over_time,
        mysql_statements,
        redis_commands,
        timeline,
    })
}

/// Messages the pipeline has stored (or dead-lettered), from its offset watermark: the sum of
/// the next offsets of the run's partitions (offsets start at 0 on a fresh topic).
struct Progress {
    sql: String,
    /// Queries issued, to leave out of the statement count.
    queries: u64,
}

impl Progress {
    fn new(config: &Config) -> Self {
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(next_offset), 0) AS UNSIGNED) FROM `{}` WHERE consumer_group = '{}'",
            config.mysql.offsets_table, config.kafka.group_id
        );
        Self { sql, queries: 0 }
    }

    async fn delivered(&mut self, conn: &mut mysql_async::Conn) -> anyhow::Result<u64> {
        self.queries += 1;
        // The table appears once the pipeline started.
        Ok(conn.query_first(&self.sql).await.ok().flatten().unwrap_or(0))
    }
}

/// The pipeline under test as a `delivery-pipeline run` process of its own.
struct PipelineProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl PipelineProcess {
    /// Starts this executable's `run` with `config` as its settings file (HTTP endpoint off).
    /// The secrets, which a settings file would show redacted, go in the environment instead;
    /// no other `DP_` variable reaches the process.
    fn spawn(config: &Config) -> anyhow::Result<Self> {
        let dir = Path::new("target/bench");
        std::fs::create_dir_all(dir).context("cannot create target/bench")?;
        let mut settings = crate::settings::Settings { pipeline: config.clone(), ..Default::default() };
        settings.http.enabled = false;
        // The per-batch timeline, which the report reads back from the log.
        settings.log.level = format!("info,{}=debug", dp_pipeline::metrics::TIMELINE);
        let c = &settings.pipeline;
        let file = dir.join(format!("{}.toml", c.instance_id));
        std::fs::write(&file, toml::to_string(&settings)?)
            .with_context(|| format!("cannot write {}", file.display()))?;
        let log = dir.join(format!("{}.log", c.instance_id));
        let out = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.arg("--config").arg(&file).arg("run");
        for (k, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("DP_")) {
            cmd.env_remove(k);
        }
        // `RUST_LOG` would win over the settings' level and could hide the timeline.
        cmd.env_remove("RUST_LOG");
        cmd.envs(crate::settings::secret_variables(c))
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd.spawn().context("cannot start the pipeline process")?;
        Ok(Self { child, log })
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!("the pipeline process exited early ({status}); its log: {}", self.log.display());
        }
        Ok(())
    }

    fn proc_file(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.child.id())).unwrap_or_default()
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(&self.proc_file("stat"))
    }

    fn rss_kib(&self) -> u64 {
        status_kib(&self.proc_file("status"), "VmRSS:")
    }

    fn peak_rss_kib(&self) -> u64 {
        status_kib(&self.proc_file("status"), "VmHWM:")
    }

    /// SIGTERM, then waits for the drain; the process must exit 0.
    fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().context("kill -TERM")?;
        let status = self.child.wait()?;
        anyhow::ensure!(
            status.success(),
            "the pipeline process exited with {status}; its log: {}",
            self.log.display()
        );
        Ok(())
    }
}

impl Drop for PipelineProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// p50, p99 and max of Kafka timestamp → `ingested_at`, in milliseconds, leaving out the
/// `skip_first` first and the `skip_last` most recently produced messages.
async fn latencies(config: &Config, skip_first: usize, skip_last: usize) -> anyhow::Result<(f64, f64, f64)> {
    let pool = mysql_pool(config)?;
    let mut conn = pool.get_conn().await?;
    let mut micros: Vec<i64> = conn
        .query(format!(
            "SELECT TIMESTAMPDIFF(MICROSECOND, kafka_timestamp, ingested_at) FROM `{}` \
             WHERE kafka_timestamp IS NOT NULL ORDER BY kafka_timestamp, id",
            config.mysql.table
        ))
        .await?;
    micros.truncate(micros.len().saturating_sub(skip_last));
    micros.drain(..skip_first.min(micros.len()));
    drop(conn);
    pool.disconnect().await?;
    micros.sort_unstable();
    let at = |q: f64| {
        micros.get(((micros.len() as f64 - 1.0) * q).round() as usize).map_or(0.0, |&m| m as f64 / 1000.0)
    };
    Ok((at(0.5), at(0.99), at(1.0)))
}

async fn questions(conn: &mut mysql_async::Conn) -> anyhow::Result<u64> {
    let row: Option<(String, u64)> = conn.query_first("SHOW GLOBAL STATUS LIKE 'Questions'").await?;
    Ok(row.map_or(0, |r| r.1))
}

async fn drop_table(config: &Config, table: &str) -> anyhow::Result<()> {
    let pool = mysql_pool(config)?;
    let mut conn = pool.get_conn().await?;
    conn.query_drop(format!("DROP TABLE IF EXISTS `{table}`, `{table}_dead_letter`")).await?;
    drop(conn);
    pool.disconnect().await?;
    Ok(())
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), KiB; 0 when absent.
fn status_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time from `/proc/<pid>/stat`, seconds (Linux clock ticks of 1/100 s).
fn cpu_seconds_of(stat: &str) -> f64 {
    // Fields after the command name, which is in parentheses and may contain spaces.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "| measure | value |")?;
        writeln!(f, "| --- | --- |")?;
        writeln!(f, "| events (partitions) | {} ({}) |", self.events, self.partitions)?;
        writeln!(f, "| repetitions (figures are medians) | {} |", self.repeat)?;
        writeln!(
            f,
            "| **MySQL alone** (pre-built 1000-row statements, round trips only) | **{:.0} rows/s** |",
            self.mysql_alone_rows_per_s
        )?;
        writeln!(
            f,
            "| the sink alone (`write_batch`: mapping, statements, transaction) | {:.0} rows/s ({:.0}% of MySQL alone) |",
            self.sink_rows_per_s,
            self.sink_ratio_to_mysql_alone * 100.0
        )?;
        writeln!(f, "| the column mapping alone (one core) | {:.0} records/s |", self.mapping_records_per_s)?;
        writeln!(
            f,
            "| naive baseline ({} rows, one autocommit INSERT each) | {:.0} rows/s |",
            self.naive_sample, self.naive_rows_per_s
        )?;
        writeln!(
            f,
            "| **end to end** (Kafka → Redis → MySQL) | **{:.0} rows/s** |",
            self.end_to_end_rows_per_s
        )?;
        writeln!(f, "| end to end / MySQL alone | {:.2} |", self.ratio_to_mysql_alone)?;
        writeln!(f, "| end to end / naive | {:.0}× |", self.ratio_to_naive)?;
        writeln!(f, "| rows stored | {} |", self.rows_stored)?;
        writeln!(
            f,
            "| latency p50 / p99 / max (backlog: includes waiting in Kafka) | {:.0} / {:.0} / {:.0} ms |",
            self.latency_ms_p50, self.latency_ms_p99, self.latency_ms_max
        )?;
        writeln!(f, "| CPU per 100k rows (pipeline process) | {:.2} s |", self.cpu_seconds_per_100k)?;
        writeln!(f, "| peak RSS (pipeline process) | {:.0} MiB |", self.peak_rss_mib)?;
        let over: Vec<String> = self.rss_mib_over_time.iter().map(|m| format!("{m:.0}")).collect();
        writeln!(f, "| RSS every second from the process's start, MiB | {} |", over.join(" "))?;
        writeln!(
            f,
            "| MySQL busy writing batches / waiting for the pipeline (share of the run) | {:.0}% / {:.0}% |",
            self.mysql_busy * 100.0,
            self.mysql_waiting_for_pipeline * 100.0
        )?;
        let t = &self.timeline;
        writeln!(
            f,
            "| timeline medians: poll (records, write-ahead ms); batch (handed over before its turn, MySQL write, write-ahead removal ms) | {:.0}, {:.1}; {:.1}, {:.1}, {:.1} ({} batches) |",
            t.poll_records, t.append_ms, t.handed_ahead_ms, t.write_ms, t.remove_ms, t.batches
        )?;
        writeln!(
            f,
            "| Redis memory per buffered message | {:.0} bytes (zstd: {:.0} bytes; zstd with a dictionary: {:.0} bytes) |",
            self.redis_bytes_per_message,
            self.redis_bytes_per_message_zstd,
            self.redis_bytes_per_message_zstd_dictionary
        )?;
        writeln!(f, "| Redis compression of the pipeline run | {:?} |", self.redis_compression)?;
        writeln!(f, "| MySQL statements per 1000 messages | {:.1} |", self.mysql_statements_per_1000)?;
        writeln!(f, "| Redis commands per 1000 messages | {:.1} |", self.redis_commands_per_1000)?;
        let services: Vec<String> =
            self.service_cpu_seconds_per_100k.iter().map(|(n, s)| format!("{n} {s:.2} s")).collect();
        writeln!(
            f,
            "| CPU per 100k rows of the services on this machine ({} cores), end to end | {} |",
            self.cores,
            services.join(", ")
        )?;
        writeln!(
            f,
            "\n| repetition | MySQL alone | sink | mapping | naive | end to end | ratio | MySQL busy | CPU/100k | peak RSS |"
        )?;
        write!(f, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")?;
        for (i, r) in self.repetitions.iter().enumerate() {
            write!(
                f,
                "\n| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0}% | {:.2} s | {:.0} MiB |",
                i + 1,
                r.mysql_alone_rows_per_s,
                r.sink_rows_per_s,
                r.mapping_records_per_s,
                r.naive_rows_per_s,
                r.end_to_end_rows_per_s,
                r.end_to_end_rows_per_s / r.mysql_alone_rows_per_s,
                r.timeline.mysql_busy * 100.0,
                r.cpu_seconds_per_100k,
                r.peak_rss_mib
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_shows_how_busy_the_pipeline_keeps_mysql() {
        // Twelve batches of 10 ms, each handed over 4 ms before its turn; after the sixth,
        // MySQL waits 5 ms for the next one (handed over 5 ms after the commit before it).
        let mut log = String::from("2026-12-07T11:18:36Z  INFO delivery_pipeline: started\n");
        let mut at = 1_000.0;
        for i in 0..12 {
            if i == 6 {
                at += 5_000.0;
            }
            let (handed, turn) = if i == 6 { (at, at) } else { (at - 4_000.0, at) };
            log.push_str(&format!(
                "2026-12-07T11:18:36Z DEBUG dp_pipeline::timeline: poll records=1000 polled={} appended={}\n",
                handed - 3_000.0,
                handed - 1_000.0
            ));
            log.push_str(&format!(
                "2026-12-07T11:18:36Z DEBUG dp_pipeline::timeline: batch rows=1000 handed={handed} turn={turn} written={} removed={}\n",
                turn + 10_000.0,
                turn + 10_800.0
            ));
            at += 10_000.0;
        }
        let t = Timeline::of_log(&log);
        assert_eq!(t.batches, 2, "the first and last five are start-up and drain");
        assert_eq!(t.write_ms, 10.0);
        assert_eq!(t.handed_ahead_ms, 2.0, "4 ms ahead, then not at all");
        assert_eq!(t.remove_ms, 0.8);
        assert_eq!((t.poll_records, t.append_ms), (1000.0, 2.0));
        // Batches 5 and 6: 20 ms of writing in a 25 ms span, 5 ms waiting.
        assert!((t.mysql_busy - 0.8).abs() < 1e-9, "{t:?}");
        assert!((t.mysql_waiting_for_pipeline - 0.2).abs() < 1e-9, "{t:?}");
        assert_eq!(Timeline::of_log("no timeline here").batches, 0);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn info_fields_are_read_by_name() {
        let info = "# Memory\r\nused_memory:1234\r\nused_memory_human:1.2K\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(1234));
        assert_eq!(info_field(info, "used_memory_rss"), None);
    }

    #[test]
    fn proc_files_are_parsed_by_field() {
        let status = "Name:\tdelivery-pipeline\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), 40_960);
        assert_eq!(status_kib(status, "VmHWM:"), 51_200);
        assert_eq!(status_kib(status, "VmSwap:"), 0);
        // pid (comm with spaces) state ppid … utime stime: fields 14 and 15 of the line.
        let stat = "42 (tokio worker 1) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9 0 1000";
        assert!((cpu_seconds_of(stat) - 3.0).abs() < 1e-9);
        assert_eq!(cpu_seconds_of("garbage"), 0.0);
        // This process: readable, non-zero.
        let own = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        assert!(status_kib(&own, "VmRSS:") > 0);
    }
}

/// What a steady-load run measured. Written as `target/bench/steady.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SteadyReport {
    /// Offered rate, events per second.
    pub offered_per_s: u64,
    /// Events produced.
    pub events: u64,
    /// Rows stored (must equal `events`).
    pub rows_stored: u64,
    /// Kafka timestamp → MySQL `ingested_at`, milliseconds, over all but the last
    /// `buffer.max_rows` messages (the tail waits for the flush interval once the load stops).
    pub latency_ms_p50: f64,
    /// See `latency_ms_p50`.
    pub latency_ms_p99: f64,
    /// See `latency_ms_p50`.
    pub latency_ms_max: f64,
    /// Time to fill one batch at the offered rate, plus one second: the p99 target.
    pub latency_target_ms: f64,
    /// Resident set size of the pipeline process, MiB, sampled every 5 s.
    pub rss_mib_over_time: Vec<f64>,
    /// Highest resident set size sampled, MiB.
    pub peak_rss_mib: f64,
    /// CPU of the pipeline process while the load was offered, percent of one core.
    pub cpu_percent_of_one_core: f64,
}

/// Offers `rate` events per second for `duration` to a fresh topic while the pipeline runs,
/// then reports latency from Kafka timestamp to MySQL commit, RSS over time and CPU.
pub async fn steady(
    config: Config,
    rate: u64,
    duration: Duration,
    partitions: i32,
) -> anyhow::Result<SteadyReport> {
    anyhow::ensure!(rate > 0 && !duration.is_zero(), "--rate and --duration must be positive");
    let id = run_id();
    let topic = format!("steady-{id}");
    let pc = scratch_config(&config, &topic, &topic, &format!("bench_steady_{id}"));
    ensure_topic_for(&pc.kafka, &topic, partitions).await?;
    let count = rate * duration.as_secs().max(1);
    step(&format!("offering {rate} events/s for {duration:?} ({count} events) to {topic}"));

    let mut pipeline = PipelineProcess::spawn(&pc)?;
    let pool = mysql_pool(&pc)?;
    let mut conn = pool.get_conn().await?;
    let mut progress = Progress::new(&pc);
    // Offer load only once the consumer holds its partitions (it stored a warm-up event), so
    // the latency measured is the pipeline's, not the group join's.
    let kafka = producer_for(&pc.kafka)?;
    let warm_up = ProduceOptions {
        brokers: pc.kafka.brokers.clone(),
        topic: topic.clone(),
        count: 1,
        rate: None,
        progress: false,
        collect_ids: false,
    };
    produce(&kafka, &warm_up).await?;
    let joined = Instant::now();
    while progress.delivered(&mut conn).await? == 0 {
        pipeline.ensure_running()?;
        anyhow::ensure!(joined.elapsed() < Duration::from_secs(120), "the pipeline stored nothing in 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_before = pipeline.cpu_seconds();
    let started = Instant::now();
    let load = tokio::spawn({
        let kafka = kafka.clone();
        let opts = ProduceOptions { count, rate: Some(rate), ..warm_up };
        async move { produce(&kafka, &opts).await }
    });
    let bar = bar(count + 1);
    let mut rss_mib_over_time = Vec::new();
    let mut next_sample = Instant::now();
    let mut load_cpu: Option<(f64, Duration)> = None;
    let mut last = (0, Instant::now());
    loop {
        let done = progress.delivered(&mut conn).await?;
        bar.set_position(done);
        if Instant::now() >= next_sample {
            rss_mib_over_time.push(pipeline.rss_kib() as f64 / 1024.0);
            next_sample += Duration::from_secs(5);
        }
        if load_cpu.is_none() && load.is_finished() {
            // CPU over the offered load only: the idle wait for the last partial batch's flush
            // interval is not load.
            load_cpu = Some((pipeline.cpu_seconds() - cpu_before, started.elapsed()));
        }
        if done > count {
            break;
        }
        if done > last.0 {
            last = (done, Instant::now());
        }
        let limit = pc.buffer.flush_interval + Duration::from_secs(60);
        anyhow::ensure!(
            last.1.elapsed() < limit,
            "no progress for {limit:?} at {done} of {} events",
            count + 1
        );
        pipeline.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let produced = load.await.context("producer task")??;
    let (cpu, wall) = load_cpu.unwrap_or_else(|| (pipeline.cpu_seconds() - cpu_before, started.elapsed()));
    pipeline.stop()?;
    bar.finish_and_clear();
    let rows: u64 =
        conn.query_first(format!("SELECT COUNT(*) FROM `{}`", pc.mysql.table)).await?.unwrap_or(0);
    drop(conn);
    pool.disconnect().await?;
    // The warm-up event waited for the group join, and once the load stops the last partial
    // batch waits for the flush interval: neither is steady state, so both are left out.
    let latency = latencies(&pc, 1, pc.buffer.max_rows).await?;
    drop_table(&config, &pc.mysql.table).await?;
    drop_dictionary(&pc).await?;
    anyhow::ensure!(rows == produced.produced + 1, "stored {rows} rows of {}", produced.produced + 1);
    let fill_ms = pc.buffer.max_rows as f64 * 1000.0 / rate as f64;
    let report = SteadyReport {
        offered_per_s: rate,
        events: produced.produced,
        rows_stored: rows - 1,
        latency_ms_p50: latency.0,
        latency_ms_p99: latency.1,
        latency_ms_max: latency.2,
        latency_target_ms: fill_ms.min(pc.buffer.flush_interval.as_secs_f64() * 1000.0) + 1000.0,
        peak_rss_mib: rss_mib_over_time.iter().copied().fold(0.0, f64::max),
        rss_mib_over_time,
        cpu_percent_of_one_core: cpu / wall.as_secs_f64().max(f64::EPSILON) * 100.0,
    };
    write_json("steady.json", &report)?;
    Ok(report)
}

impl std::fmt::Display for SteadyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "| measure | value |")?;
        writeln!(f, "| --- | --- |")?;
        writeln!(f, "| offered | {} events/s, {} events |", self.offered_per_s, self.events)?;
        writeln!(f, "| rows stored | {} |", self.rows_stored)?;
        writeln!(
            f,
            "| latency p50 / p99 / max | {:.0} / {:.0} / {:.0} ms (target p99 ≤ {:.0} ms: batch fill time + 1 s) |",
            self.latency_ms_p50, self.latency_ms_p99, self.latency_ms_max, self.latency_target_ms
        )?;
        writeln!(f, "| peak RSS (pipeline process) | {:.0} MiB |", self.peak_rss_mib)?;
        let over: Vec<String> = self.rss_mib_over_time.iter().map(|m| format!("{m:.0}")).collect();
        writeln!(f, "| RSS every 5 s, MiB | {} |", over.join(" "))?;
        write!(
            f,
            "| CPU (pipeline process, while loaded) | {:.1}% of one core |",
            self.cpu_percent_of_one_core
        )
    }
}
