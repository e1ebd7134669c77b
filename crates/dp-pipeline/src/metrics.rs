//! The pipeline's metrics, recorded through the [`metrics`] facade: whoever embeds the pipeline
//! installs the recorder it wants (the `delivery-pipeline` binary exports them to Prometheus on
//! `/metrics`); without one, recording costs next to nothing. `docs/metrics.md` lists them.

use std::collections::HashMap;
use std::sync::Arc;

use dp_core::{FlushTrigger, Record};
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// The `tracing` target of the per-batch timeline: at `debug`, one `poll` event per poll (records,
/// when they arrived, when their write-ahead copies were stored) and one `batch` event per batch
/// (when it was handed to the sink, when its turn came, when the sink returned, when its
/// write-ahead copies were removed), in microseconds on one clock of the process. `delivery-pipeline
/// bench` reads them to show whether the store ever waits for the pipeline.
pub const TIMELINE: &str = "dp_pipeline::timeline";

/// Microseconds from the timeline's start (the first call) to `at`.
pub(crate) fn timeline_us(at: std::time::Instant) -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    at.saturating_duration_since(start).as_micros() as u64
}

/// Messages received from the source, by topic and partition.
pub const CONSUMED: &str = "dp_messages_consumed_total";
/// Rows newly written.
pub const INSERTED: &str = "dp_rows_inserted_total";
/// Rows updated by an upsert that won (`write.mode = "upsert"`).
pub const UPDATED: &str = "dp_rows_updated_total";
/// Rows deleted, or marked deleted, by a tombstone (`write.delete = "tombstone"`).
pub const DELETED: &str = "dp_rows_deleted_total";
/// Messages found already stored (redelivery, restore, producer duplicate).
pub const DUPLICATES: &str = "dp_rows_duplicate_total";
/// Messages dead-lettered by the runtime after the sink refused them (`class="sink_rejected"`);
/// the MySQL sink counts its own classes under the same name.
pub const DEAD_LETTERED: &str = "dp_dead_lettered_total";
/// Batches written, by trigger.
pub const BATCHES: &str = "dp_batches_total";
/// Rows per batch written.
pub const BATCH_ROWS: &str = "dp_batch_rows";
/// Time to write one batch, retries included.
pub const FLUSH_SECONDS: &str = "dp_flush_duration_seconds";
/// Kafka timestamp to MySQL commit, per message.
pub const LATENCY_SECONDS: &str = "dp_end_to_end_latency_seconds";
/// Messages held in memory (collecting plus being written).
pub const BUFFERED: &str = "dp_buffered_messages";
/// Approximate bytes of the messages held in memory.
pub const BUFFERED_BYTES: &str = "dp_buffered_bytes";
/// Messages with a Redis write-ahead copy that are not delivered yet (in memory or spilled).
pub const REDIS_BUFFERED: &str = "dp_redis_buffered_messages";
/// Messages held in Redis only (not in memory) while the sink is failing.
pub const SPILLED: &str = "dp_spilled_messages";
/// Write-ahead appends or deletions that failed.
pub const BUFFER_FAILURES: &str = "dp_redis_backup_failures_total";
/// 1 while Redis is unreachable (messages are held in memory only).
pub const BUFFER_DOWN: &str = "dp_redis_down";
/// Partitions whose messages are held in memory only.
pub const SUSPENDED: &str = "dp_suspended_partitions";
/// Sink failures retried (outages and statement faults), by error code.
pub const RETRIES: &str = "dp_sink_retries_total";
/// 1 while the sink fails transiently (a batch is being retried).
pub const SINK_FAILING: &str = "dp_sink_failing";
/// Sink attempts refused as a statement or schema fault (the same for every record: retried,
/// never dead-lettered), by error code.
pub const STATEMENT_FAULTS: &str = "dp_sink_statement_faults_total";
/// 1 while the batch being retried fails with a statement or schema fault.
pub const STATEMENT_FAULT: &str = "dp_sink_statement_fault";
/// Seconds the sink has been failing without a success (0 when healthy).
pub const OUTAGE_SECONDS: &str = "dp_sink_outage_seconds";
/// 1 once startup (restore) is done and until the drain starts.
pub const CONSUMING: &str = "dp_consuming";
/// Messages restored from this instance's buffer at startup.
pub const RESTORED: &str = "dp_restored_messages_total";
/// Messages adopted from the buffers of instances whose lease expired.
pub const ADOPTED: &str = "dp_adopted_messages_total";
/// Messages dropped by the filter (acknowledged, never stored), by reason.
pub const FILTERED: &str = "dp_filtered_total";
/// 1 while an operator has paused the pipeline.
pub const PAUSED: &str = "dp_paused";

/// Registers descriptions and units, for exporters that show them. Call once after installing
/// a recorder.
pub fn describe() {
    describe_counter!(CONSUMED, Unit::Count, "Messages received from Kafka, by topic and partition.");
    describe_counter!(INSERTED, Unit::Count, "Rows newly written to MySQL.");
    describe_counter!(UPDATED, Unit::Count, "Existing rows updated by an upsert that won.");
    describe_counter!(DELETED, Unit::Count, "Rows deleted, or marked deleted, by a tombstone.");
    describe_counter!(
        DUPLICATES,
        Unit::Count,
        "Messages found already stored (replays, producer duplicates)."
    );
    describe_counter!(DEAD_LETTERED, Unit::Count, "Messages dead-lettered, by class.");
    describe_counter!(BATCHES, Unit::Count, "Batches written, by trigger.");
    describe_histogram!(BATCH_ROWS, Unit::Count, "Rows per batch written.");
    describe_histogram!(FLUSH_SECONDS, Unit::Seconds, "Time to write one batch, retries included.");
    describe_histogram!(LATENCY_SECONDS, Unit::Seconds, "Kafka message timestamp to MySQL commit.");
    describe_gauge!(BUFFERED, Unit::Count, "Messages held in memory (collecting and being written).");
    describe_gauge!(BUFFERED_BYTES, Unit::Bytes, "Approximate bytes of the messages held in memory.");
    describe_gauge!(
        REDIS_BUFFERED,
        Unit::Count,
        "Undelivered messages with a Redis write-ahead copy (in memory or spilled)."
    );
    describe_gauge!(SPILLED, Unit::Count, "Messages held in Redis only while the sink is failing.");
    describe_counter!(BUFFER_FAILURES, Unit::Count, "Redis write-ahead appends or deletions that failed.");
    describe_gauge!(BUFFER_DOWN, "1 while Redis is unreachable and messages are held in memory only.");
    describe_gauge!(SUSPENDED, Unit::Count, "Partitions whose messages are held in memory only.");
    describe_counter!(
        RETRIES,
        Unit::Count,
        "Sink failures retried (outages and statement faults), by error code."
    );
    describe_gauge!(SINK_FAILING, "1 while the sink fails transiently and a batch is being retried.");
    describe_counter!(
        STATEMENT_FAULTS,
        Unit::Count,
        "Sink attempts refused as a statement or schema fault (every record alike: retried, never dead-lettered), by error code."
    );
    describe_gauge!(
        STATEMENT_FAULT,
        "1 while the batch being retried fails with a statement or schema fault: fix the table or the mapping."
    );
    describe_gauge!(OUTAGE_SECONDS, Unit::Seconds, "Seconds the sink has been failing without a success.");
    describe_gauge!(
        CONSUMING,
        "1 while the pipeline consumes (after the startup restore, before the drain)."
    );
    describe_gauge!("dp_kafka_brokers_up", "1 while librdkafka reports a broker connection up.");
    describe_gauge!(
        "dp_kafka_paused",
        "1 while the Kafka partitions are paused because the pipeline takes no records."
    );
    describe_gauge!(
        "dp_kafka_consumer_lag",
        Unit::Count,
        "Messages behind the partition's high watermark, per topic and partition."
    );
    describe_counter!(
        "dp_kafka_rebalances_total",
        Unit::Count,
        "Partition assignments and revocations, by kind."
    );
    describe_counter!(
        RESTORED,
        Unit::Count,
        "Messages restored from this instance's Redis buffer at startup."
    );
    describe_counter!(ADOPTED, Unit::Count, "Messages adopted from instances whose lease expired.");
    describe_counter!(
        FILTERED,
        Unit::Count,
        "Messages dropped by a filter (acknowledged, never stored), by reason."
    );
    describe_gauge!(PAUSED, "1 while an operator has paused the pipeline (POST /admin/pause).");
}

/// Counts the records a filter dropped from one chunk, per reason.
pub(crate) fn filtered(reasons: &[(String, usize)]) {
    for (reason, n) in reasons {
        counter!(FILTERED, "reason" => reason.clone()).increment(*n as u64);
    }
}

/// Counts a polled chunk per topic and partition.
pub(crate) fn consumed(records: &[Record]) {
    let mut per: HashMap<(&Arc<str>, i32), u64> = HashMap::new();
    // Records come in runs of one partition: one map entry per run, not per record.
    for run in records.chunk_by(Record::same_partition) {
        *per.entry((&run[0].topic, run[0].partition)).or_default() += run.len() as u64;
    }
    for ((topic, partition), n) in per {
        counter!(CONSUMED, "topic" => topic.to_string(), "partition" => partition.to_string()).increment(n);
    }
}

/// Records a written batch and each message's latency from its Kafka timestamp.
pub(crate) fn delivered(records: &[Record], trigger: FlushTrigger, seconds: f64, now_ms: i64) {
    counter!(BATCHES, "trigger" => trigger.as_str()).increment(1);
    histogram!(BATCH_ROWS).record(records.len() as f64);
    histogram!(FLUSH_SECONDS).record(seconds);
    let latency = histogram!(LATENCY_SECONDS);
    for r in records {
        if let Some(ts) = r.timestamp_ms
            && ts > 0
        {
            latency.record((now_ms - ts).max(0) as f64 / 1000.0);
        }
    }
}

/// Sets a gauge to an integer value.
pub(crate) fn set(name: &'static str, value: usize) {
    gauge!(name).set(value as f64);
}
