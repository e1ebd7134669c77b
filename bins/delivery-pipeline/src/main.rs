//! `delivery-pipeline`: moves delivery-tracking events from Kafka into MySQL in large,
//! idempotent batches, with a Redis write-ahead backup.
//!
//! This file only parses arguments, sets up logging and signals, and calls the libraries.

/// mysql_async keeps up to 128 I/O buffers for reuse and lets each keep up to 4 MiB of capacity.
/// Every 1000-row INSERT needs a ~1.3 MB buffer, and the pool hands its buffers out in turn, so
/// over a long backlog nearly all of them grow to that size: memory that does nothing. A
/// jemalloc heap profile of a 1M backlog found 10.6 MiB held this way with 8 buffers; with 2,
/// jemalloc's allocated total fell from 30–35 to 17–28 MiB (docs/PERFORMANCE.md). A batch's
/// write uses one buffer for its statement and one for the packet it reads; more at once (the
/// watermark reads of a rebalance beside a batch) are allocated and dropped. A kept buffer may
/// hold up to 2 MiB, so a statement does not grow a new one by doublings. Besides the pool,
/// each open connection holds one buffer for the packets it reads (up to
/// `mysql.max_connections`, 4 by default), which may be one that grew. mysql_async reads these
/// from the environment when it first creates its pool, so they are set here, unless the
/// operator set them.
#[allow(unsafe_code)]
fn cap_mysql_buffers() {
    for (var, value) in [("MYSQL_ASYNC_BUFFER_POOL_CAP", "2"), ("MYSQL_ASYNC_BUFFER_SIZE_CAP", "2097152")] {
        if std::env::var_os(var).is_none() {
            // SAFETY: called first thing in `main`, before the runtime or any other thread
            // exists, so nothing can read the environment concurrently.
            unsafe { std::env::set_var(var, value) };
        }
    }
}

// jemalloc returns freed memory to the system and fragments less than glibc's malloc under
// many threads (librdkafka's, tokio's): RSS stays flat however long the backlog
// (docs/PERFORMANCE.md). It serves the C libraries' `malloc` too (librdkafka, OpenSSL: the
// `unprefixed_malloc_on_supported_platforms` feature), whose glibc arenas otherwise held
// 17 MiB at a 1M backlog's peak. The library crates leave the allocator to whoever embeds them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: freed pages go back to the system after 300 ms
/// (its default is ten seconds), purged by its own background thread rather than by the
/// threads that free them. A batch's buffers (records, Redis command, statement parameters)
/// are large allocations of varying sizes that jemalloc otherwise keeps as dirty pages: peak
/// RSS on a 200k backlog fell from 95 to 63 MiB with a one-second decay, and 300 ms took
/// another ~5 MiB off a 1M backlog's peak (docs/PERFORMANCE.md). Purging at once (0 ms) costs
/// twice the CPU. `MALLOC_CONF` in the environment still overrides it.
#[allow(non_upper_case_globals, unsafe_code)]
#[unsafe(export_name = "malloc_conf")]
static malloc_conf: Option<&'static std::ffi::c_char> =
    // SAFETY: a pointer to the first byte of a static, NUL-terminated string.
    Some(unsafe { &*c"background_thread:true,dirty_decay_ms:300,muzzy_decay_ms:0".as_ptr() });

use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use delivery_pipeline::settings::LogFormat;
use delivery_pipeline::settings::{self, Settings};
use delivery_pipeline::{bench, demo, dlq, http, offsets, produce};
use dp_buffer_redis::RedisBuffer;
use dp_core::{Buffer, Sink};
use dp_sink_mysql::MysqlSink;
use dp_source_kafka::KafkaSource;

/// Kafka → MySQL in large, idempotent batches, with a Redis write-ahead backup.
///
/// Settings come from built-in defaults, then the file given with --config, then environment
/// variables prefixed DP_ with __ for nesting (DP_KAFKA__BROKERS sets kafka.brokers). See
/// docs/configuration.md for every key.
#[derive(Parser)]
#[command(name = "delivery-pipeline", version, propagate_version = true)]
struct Cli {
    /// TOML settings file.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format; overrides log.format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<CliLogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CliLogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline until SIGTERM or SIGINT, then drain and exit 0.
    ///
    /// On start, records an earlier run of this instance left in Redis are written to MySQL
    /// before anything is consumed. A second signal during the drain exits at once; what was
    /// not yet written stays in Redis for the next start.
    Run,
    /// Create the events and dead-letter tables if they are missing.
    Migrate {
        /// Print the DDL instead of running it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the effective settings (passwords redacted) and check that Kafka, Redis and MySQL
    /// answer. Exits non-zero if any does not.
    CheckConfig,
    /// Write synthetic delivery events (~500-byte JSON) to a topic.
    Produce {
        /// Topic; defaults to the first of kafka.topics.
        #[arg(long)]
        topic: Option<String>,
        /// How many events.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Events per second; unlimited when unset.
        #[arg(long)]
        rate: Option<u64>,
        /// Create the topic with this many partitions if it does not exist.
        #[arg(long)]
        partitions: Option<i32>,
    },
    /// Benchmark on the configured Kafka, MySQL and Redis: pre-produce a backlog, then (3 times
    /// by default) measure MySQL alone, the sink alone, the mapping alone and a naive
    /// one-insert-per-message baseline, and run the real pipeline through the backlog; print
    /// the medians and write target/bench/e2e.json.
    Bench {
        /// Events in the backlog.
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// Partitions of the fresh topic.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Messages in the naive baseline's sample.
        #[arg(long, default_value_t = 20_000)]
        naive_sample: u64,
        /// Take every measure this many times and report the medians.
        #[arg(long, default_value_t = 3)]
        repeat: u32,
        /// Steady-load mode instead: offer this many events per second (e.g. the design's
        /// 463) while the pipeline runs, and report latency, RSS over time and CPU.
        #[arg(long)]
        rate: Option<u64>,
        /// How long the steady load lasts.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Show where the consumer group stands on each partition, or move it (re-read a period,
    /// skip one): Kafka's committed offsets and the MySQL watermarks together.
    Offsets {
        #[command(subcommand)]
        command: OffsetsCommand,
    },
    /// Inspect and replay the dead-letter table.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Run the whole path end to end against an embedded Kafka broker and the configured
    /// MySQL and Redis, then print what happened. Needs no Kafka installation.
    Demo {
        /// Events to produce and deliver.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Partitions of the demo topic. Default: enough that no partition exceeds what the
        /// embedded broker keeps (5 MiB), at least 4; a smaller value is raised.
        #[arg(long)]
        partitions: Option<i32>,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead-letter entries, oldest first: coordinates, error class, MySQL errno,
    /// attempts, last failure, size and reason.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Feed dead-letter entries through the sink again, oldest first. Stored entries are
    /// removed; refused ones stay with one more attempt counted. The payload is read from the
    /// entry's `payload` column, so a payload fixed in place (UPDATE … SET payload = …) is what
    /// gets stored. Idempotent: running it twice stores nothing twice.
    Replay {
        #[command(flatten)]
        filter: DlqFilter,
    },
}

#[derive(Subcommand)]
enum OffsetsCommand {
    /// Per partition: Kafka's committed offset, the MySQL watermark, the log start and end, and
    /// the lag (a partition starts at the larger of committed offset and watermark).
    Show {
        #[command(flatten)]
        selection: OffsetsSelection,
        /// One JSON object per partition instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move Kafka's committed offsets and the MySQL watermarks of the group together, then
    /// print what changed. Refused while the group has live members: stop every instance first.
    Reset {
        /// earliest, latest, an offset, or an RFC 3339 time (the first message at or after it;
        /// the log end where there is none). An offset outside the log is moved into it.
        #[arg(long)]
        to: offsets::Target,
        #[command(flatten)]
        selection: OffsetsSelection,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args)]
struct OffsetsSelection {
    /// Only this topic (one of kafka.topics); all of them when unset.
    #[arg(long)]
    topic: Option<String>,
    /// Only this partition.
    #[arg(long)]
    partition: Option<i32>,
}

impl From<OffsetsSelection> for offsets::Selection {
    fn from(s: OffsetsSelection) -> Self {
        Self { topic: s.topic, partition: s.partition }
    }
}

#[derive(clap::Args)]
struct DlqFilter {
    /// Only entries that last failed since then: a duration back from now (2h, 30m) or an
    /// RFC 3339 timestamp.
    #[arg(long)]
    since: Option<dlq::Since>,
    /// Only entries of this error class (invalid_json, field_too_long, sink_rejected, …).
    #[arg(long)]
    class: Option<String>,
    /// At most this many entries.
    #[arg(long)]
    limit: Option<u64>,
}

impl From<DlqFilter> for dlq::Filter {
    fn from(f: DlqFilter) -> Self {
        Self { since: f.since, class: f.class, limit: f.limit }
    }
}

fn main() -> ExitCode {
    cap_mysql_buffers();
    let cli = Cli::parse();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut settings = match settings::load(cli.config.as_deref(), &env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.log_format {
        Some(CliLogFormat::Json) => settings.log.format = LogFormat::Json,
        Some(CliLogFormat::Text) => settings.log.format = LogFormat::Text,
        None => {}
    }
    init_logging(&settings);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, settings)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(settings: &Settings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log.level));
    // Colours only on a terminal: log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match settings.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn dispatch(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    let config = settings.pipeline.clone();
    match command {
        Command::Run => {
            let metrics = http::install_metrics()?;
            let pipeline = dp_assembly::build(&config).await?;
            // The endpoint stops (its task is aborted) when `run` returns.
            let _http = if settings.http.enabled {
                let admin = settings
                    .http
                    .admin_token()
                    .map_err(anyhow::Error::msg)?
                    .map(|token| http::Admin { token, pause: pipeline.pause_control() });
                let routes = if admin.is_some() {
                    "/livez, /readyz, /metrics, POST /admin/pause and /admin/resume"
                } else {
                    "/livez, /readyz, /metrics"
                };
                let (address, task) =
                    http::serve(&settings.http.address, pipeline.readiness(), metrics, admin).await?;
                tracing::info!(%address, routes, "http endpoint listening");
                Some(tokio_util::task::AbortOnDropHandle::new(task))
            } else {
                None
            };
            tracing::info!(
                instance_id = %config.instance_id,
                topics = ?config.kafka.topics,
                group_id = %config.kafka.group_id,
                table = %config.mysql.table,
                max_rows = config.buffer.max_rows,
                flush_interval = ?config.buffer.flush_interval,
                "delivery-pipeline started"
            );
            let summary = pipeline.run(shutdown_signal()).await?;
            tracing::info!(stats = ?summary.stats, elapsed = ?summary.elapsed, "delivery-pipeline stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { dry_run: true } => {
            for ddl in config.mysql.ddl().map_err(anyhow::Error::msg)? {
                println!("{ddl};\n");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { dry_run: false } => {
            let mut mysql = config.mysql.clone();
            mysql.create_table = true;
            let sink = MysqlSink::connect(&mysql).await?;
            println!(
                "tables {} and `{}` are ready",
                sink.tables().iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "),
                sink.dead_letter_table()
            );
            sink.close().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => check_config(&settings).await,
        Command::Produce { topic, count, rate, partitions } => {
            let topic = topic.or_else(|| config.kafka.topics.first().cloned()).context("no topic given")?;
            if let Some(p) = partitions {
                produce::ensure_topic_for(&config.kafka, &topic, p).await?;
            }
            let report = produce::produce(
                &produce::producer_for(&config.kafka)?,
                &produce::ProduceOptions {
                    brokers: config.kafka.brokers.clone(),
                    topic: topic.clone(),
                    count,
                    rate,
                    progress: true,
                    collect_ids: false,
                },
            )
            .await?;
            println!(
                "produced {} events to {topic} in {:.1}s ({:.0}/s)",
                report.produced,
                report.elapsed.as_secs_f64(),
                report.produced as f64 / report.elapsed.as_secs_f64().max(f64::EPSILON)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { rate: Some(rate), duration, partitions, .. } => {
            let report = bench::steady(config, rate, duration, partitions).await?;
            println!("\n{report}\n\nwritten to target/bench/steady.json");
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { count, partitions, naive_sample, repeat, rate: None, .. } => {
            let report =
                bench::run(config, bench::BenchOptions { count, partitions, naive_sample, repeat }).await?;
            println!("\n{report}\n\nwritten to target/bench/e2e.json");
            Ok(ExitCode::SUCCESS)
        }
        Command::Offsets { command: OffsetsCommand::Show { selection, json } } => {
            let states = offsets::show(&config, &selection.into()).await?;
            if json {
                for s in &states {
                    println!("{}", serde_json::to_string(s)?);
                }
            } else {
                offsets::print_states(&config.kafka.group_id, &states);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Offsets { command: OffsetsCommand::Reset { to, selection, dry_run } } => {
            let changes = offsets::reset(&config, &selection.into(), to, dry_run).await?;
            offsets::print_changes(&config.kafka.group_id, to, &changes, dry_run);
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command: DlqCommand::List { filter, json } } => {
            let entries = dlq::list(&config.mysql, &filter.into()).await?;
            if json {
                for e in &entries {
                    println!("{}", serde_json::to_string(e)?);
                }
            } else {
                dlq::print_table(&entries);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command: DlqCommand::Replay { filter } } => {
            let report = dlq::replay(&config.mysql, &config.schema_registry, &filter.into(), true).await?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { count, partitions } => {
            let report = demo::run(config, demo::DemoOptions { count, partitions }).await?;
            println!("{report}");
            let ok = report.rows + report.dead_letters == report.produced && report.redis_keys_left == 0;
            if !ok {
                eprintln!("error: the demo did not account for every event");
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

async fn check_config(settings: &Settings) -> anyhow::Result<ExitCode> {
    let config = &settings.pipeline;
    println!("# effective settings (passwords redacted)\n{}", settings::to_toml(settings));
    let timeout = Duration::from_secs(5);
    let mut failed = false;
    let mut report = |what: &str, result: Result<String, String>| match result {
        Ok(detail) => println!("ok    {what}: {detail}"),
        Err(e) => {
            failed = true;
            println!("FAIL  {what}: {e}");
        }
    };
    report(
        "kafka",
        KafkaSource::check_connection(&config.kafka, timeout)
            .await
            .map(|()| format!("{} answers", config.kafka.brokers))
            .map_err(|e| e.to_string()),
    );
    let redis = match RedisBuffer::connect(&config.redis, &config.instance_id).await {
        Ok(b) => {
            let keys = b.count_keys().await.map_err(|e| e.to_string());
            let _ = b.close().await;
            keys.map(|n| {
                format!(
                    "{} answers; {n} buffered records for instance {}",
                    config.redis.url, config.instance_id
                )
            })
        }
        Err(e) => Err(e.to_string()),
    };
    report("redis", redis);
    let mut mysql = config.mysql.clone();
    mysql.create_table = false;
    let mysql_result = match MysqlSink::connect(&mysql).await {
        Ok(s) => {
            let _ = s.close().await;
            Ok(format!("{} answers; table `{}` has the expected columns", mysql.url, mysql.table))
        }
        Err(e) => Err(e.to_string()),
    };
    report("mysql", mysql_result);
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Completes on the first SIGTERM or SIGINT; a second one exits the process at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("shutdown requested; draining (a second signal exits at once, Redis keeps the buffer)");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without draining; buffered records stay in Redis");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => {}
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        }
    }
}
