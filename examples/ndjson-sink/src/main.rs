//! A custom sink and a custom source, run by the runtime alone: each line of standard input
//! becomes a record, and `NdjsonSink` (in `lib.rs`) writes it to a file. No Kafka, Redis or
//! MySQL client is compiled in: the example depends on `dp-core` and `dp-pipeline` only.
//!
//! ```sh
//! seq 1 5000 | sed 's/.*/{"n":&}/' | cargo run -p example-ndjson-sink -- /tmp/events.ndjson
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use dp_core::{Record, Source, SourceError};
use dp_pipeline::{BatchingConfig, MemoryBuffer, Pipeline, PipelineOptions};
use example_ndjson_sink::NdjsonSink;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};
use tokio::sync::oneshot;

/// Lines of standard input as records of topic `stdin`, partition 0, offset = line number
/// (from 0). Once the input ends and every line was handed out, it says so on `ended`.
struct StdinLines {
    lines: Lines<BufReader<Stdin>>,
    next_offset: i64,
    /// Read but not handed out yet: a poll cancelled between two lines loses none.
    pending: Vec<Record>,
    ended: Option<oneshot::Sender<()>>,
}

#[async_trait]
impl Source for StdinLines {
    async fn poll(&mut self, max: usize) -> Result<Vec<Record>, SourceError> {
        // Wait for a first line, then take what follows at once, up to `max`.
        while self.pending.len() < max {
            let patience = if self.pending.is_empty() { Duration::MAX } else { Duration::from_millis(20) };
            let line = match tokio::time::timeout(patience, self.lines.next_line()).await {
                Err(_) => break,
                Ok(line) => {
                    line.map_err(|e| SourceError::permanent("cannot read standard input").with_source(e))?
                }
            };
            let Some(line) = line else {
                if self.pending.is_empty() {
                    if let Some(ended) = self.ended.take() {
                        let _ = ended.send(());
                    }
                    std::future::pending::<()>().await;
                }
                break;
            };
            self.pending.push(Record::new("stdin", 0, self.next_offset, Some(line.into_bytes())));
            self.next_offset += 1;
        }
        Ok(std::mem::take(&mut self.pending))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").with_writer(std::io::stderr).init();
    let path = PathBuf::from(std::env::args().nth(1).context("usage: example-ndjson-sink <file> < input")?);

    let (ended, input_ended) = oneshot::channel();
    let source = StdinLines {
        lines: BufReader::new(tokio::io::stdin()).lines(),
        next_offset: 0,
        pending: Vec::new(),
        ended: Some(ended),
    };
    let options = PipelineOptions::new().buffer(BatchingConfig {
        max_rows: 500,
        flush_interval: Duration::from_secs(1),
        ..BatchingConfig::default()
    });
    // Standard input cannot be read twice, so a write-ahead copy would restore nothing after
    // a crash: the in-memory buffer is enough.
    let pipeline = Pipeline::new(
        Box::new(source),
        Arc::new(MemoryBuffer::new()),
        Arc::new(NdjsonSink::open(&path)?),
        options,
    )?;
    let summary = pipeline
        .run(async {
            tokio::select! {
                _ = input_ended => {}
                _ = tokio::signal::ctrl_c() => {}
            }
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
