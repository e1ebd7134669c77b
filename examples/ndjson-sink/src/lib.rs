//! A custom sink from scratch: newline-delimited JSON in a file.
//!
//! [`NdjsonSink`] implements [`Sink`] and nothing else of the project; `main.rs` runs it
//! through the pipeline, and `tests/conformance.rs` checks it with the sink conformance kit.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use async_trait::async_trait;
use dp_core::{BatchOutcome, Record, Sink, SinkError};

/// Appends records to a file, one JSON object per line
/// (`{"topic":…,"partition":…,"offset":…,"value":…}`), skipping records already written.
pub struct NdjsonSink {
    path: PathBuf,
    written: Mutex<HashSet<(String, i32, i64)>>,
}

impl NdjsonSink {
    /// Opens (or creates) `path` and remembers the coordinates already in it.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let mut written = HashSet::new();
        if path.exists() {
            for line in read_lines(path)? {
                written.insert(line);
            }
        }
        Ok(Self { path: path.to_owned(), written: Mutex::new(written) })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The (topic, partition, offset) of every line of the file at `path`, in file order.
pub fn read_lines(path: &Path) -> anyhow::Result<Vec<(String, i32, i64)>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{} line {} is not JSON", path.display(), n + 1))?;
        match (v["topic"].as_str(), v["partition"].as_i64(), v["offset"].as_i64()) {
            (Some(t), Some(p), Some(o)) => out.push((t.to_owned(), p as i32, o)),
            _ => anyhow::bail!("{} line {} has no topic, partition and offset", path.display(), n + 1),
        }
    }
    Ok(out)
}

#[async_trait]
impl Sink for NdjsonSink {
    async fn write_batch(&self, records: &[Record]) -> Result<BatchOutcome, SinkError> {
        let mut written = self.written.lock().map_err(|_| SinkError::permanent("sink state poisoned"))?;
        let mut out = String::new();
        let mut fresh = HashSet::new();
        for r in records {
            let coords = (r.topic.to_string(), r.partition, r.offset);
            // Already in the file, or earlier in this batch (a re-read partition can repeat one).
            if written.contains(&coords) || fresh.contains(&coords) {
                continue;
            }
            let value = r.payload.as_deref().map(String::from_utf8_lossy);
            let line = serde_json::json!({"topic": &*r.topic, "partition": r.partition, "offset": r.offset, "value": value});
            out.push_str(&line.to_string());
            out.push('\n');
            fresh.insert(coords);
        }
        if fresh.is_empty() {
            return Ok(BatchOutcome { duplicates: records.len(), ..BatchOutcome::default() });
        }
        // A failed write or sync is an I/O problem, not a problem of the data: transient.
        let mut file = OpenOptions::new().create(true).append(true).open(&self.path).map_err(|e| {
            SinkError::transient(format!("cannot open {}", self.path.display())).with_source(e)
        })?;
        let len = file.metadata().map(|m| m.len()).map_err(|e| {
            SinkError::transient(format!("cannot read the size of {}", self.path.display())).with_source(e)
        })?;
        if let Err(e) = file.write_all(out.as_bytes()).and_then(|()| file.sync_data()) {
            // All or nothing: cut a partly written batch off again, so the retry does not follow
            // half a line. Should that fail too, the sink refuses to go on.
            return Err(match file.set_len(len) {
                Ok(()) => {
                    SinkError::transient(format!("cannot write {}", self.path.display())).with_source(e)
                }
                Err(e2) => SinkError::permanent(format!(
                    "cannot write {} and cannot cut the partial batch off ({e2})",
                    self.path.display()
                ))
                .with_source(e),
            });
        }
        let inserted = fresh.len();
        written.extend(fresh);
        Ok(BatchOutcome { inserted, duplicates: records.len() - inserted, ..BatchOutcome::default() })
    }
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
