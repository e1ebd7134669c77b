//! A custom sink from scratch: newline-delimited JSON in a file, run through the pipeline.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use dp_core::{BatchOutcome, Record, Sink, SinkError};
use dp_pipeline::{BufferConfig, Pipeline, RetryConfig};

/// Appends records to a file, one JSON object per line, skipping records already written.
struct NdjsonSink {
    path: PathBuf,
    written: Mutex<HashSet<(String, i32, i64)>>,
}

impl NdjsonSink {
    /// Opens (or creates) `path` and remembers the coordinates already in it.
    fn open(path: &Path) -> anyhow::Result<Self> {
        let mut written = HashSet::new();
        if path.exists() {
            let file =
                std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            for line in BufReader::new(file).lines() {
                let v: serde_json::Value = serde_json::from_str(&line?)?;
                if let (Some(t), Some(p), Some(o)) =
                    (v["topic"].as_str(), v["partition"].as_i64(), v["offset"].as_i64())
                {
                    written.insert((t.to_owned(), p as i32, o));
                }
            }
        }
        Ok(Self { path: path.to_owned(), written: Mutex::new(written) })
    }
}

#[async_trait]
impl Sink for NdjsonSink {
    async fn write_batch(&self, records: &[Record]) -> Result<BatchOutcome, SinkError> {
        let mut written = self.written.lock().map_err(|_| SinkError::permanent("sink state poisoned"))?;
        let mut out = String::new();
        let mut fresh = Vec::new();
        for r in records {
            let coords = (r.topic.to_string(), r.partition, r.offset);
            if written.contains(&coords) {
                continue;
            }
            let value = r.payload.as_deref().map(String::from_utf8_lossy);
            let line = serde_json::json!({"topic": &*r.topic, "partition": r.partition, "offset": r.offset, "value": value});
            out.push_str(&line.to_string());
            out.push('\n');
            fresh.push(coords);
        }
        // A failed write or sync is an I/O problem, not a problem of the data: transient.
        let mut file = OpenOptions::new().create(true).append(true).open(&self.path).map_err(|e| {
            SinkError::transient(format!("cannot open {}", self.path.display())).with_source(e)
        })?;
        file.write_all(out.as_bytes()).and_then(|()| file.sync_data()).map_err(|e| {
            SinkError::transient(format!("cannot write {}", self.path.display())).with_source(e)
        })?;
        let inserted = fresh.len();
        written.extend(fresh);
        Ok(BatchOutcome { inserted, duplicates: records.len() - inserted, dead_lettered: 0 })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut args = std::env::args().skip(1);
    let topic = args.next().context("usage: example-ndjson-sink <topic> <file>")?;
    let path = PathBuf::from(args.next().context("usage: example-ndjson-sink <topic> <file>")?);

    let kafka = dp_source_kafka::KafkaSourceConfig {
        topics: vec![topic.clone()],
        group_id: format!("ndjson-{topic}"),
        ..Default::default()
    };
    let source = dp_source_kafka::KafkaSource::new(&kafka)?;
    let buffer = dp_buffer_redis::RedisBuffer::connect(&Default::default(), "ndjson-example").await?;
    let sink = NdjsonSink::open(&path)?;
    let pipeline = Pipeline::new(
        Box::new(source),
        Arc::new(buffer),
        Arc::new(sink),
        BufferConfig { max_rows: 500, flush_interval: Duration::from_secs(1), ..BufferConfig::default() },
        RetryConfig::default(),
        Duration::from_secs(20),
    );
    let summary = pipeline
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    println!(
        "wrote {} new lines to {} ({} already there)",
        summary.stats.inserted,
        path.display(),
        summary.stats.duplicates
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: i64) -> Record {
        Record::new("t", 0, offset, Some(format!("{{\"n\":{offset}}}").into_bytes()))
    }

    #[tokio::test]
    async fn replayed_batches_add_nothing_even_after_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("out.ndjson");
        let batch: Vec<Record> = (0..5).map(rec).collect();
        let sink = NdjsonSink::open(&path).expect("open");
        assert_eq!(sink.write_batch(&batch).await.expect("write").inserted, 5);
        assert_eq!(sink.write_batch(&batch).await.expect("replay").duplicates, 5);
        let restarted = NdjsonSink::open(&path).expect("reopen");
        let more: Vec<Record> = (3..8).map(rec).collect();
        let o = restarted.write_batch(&more).await.expect("write");
        assert_eq!((o.inserted, o.duplicates), (3, 2));
        let lines = std::fs::read_to_string(&path).expect("read").lines().count();
        assert_eq!(lines, 8);
    }
}
