//! The delivery-pipeline runtime: wires a [`Source`](dp_core::Source), a
//! [`Buffer`](dp_core::Buffer) and a [`Sink`](dp_core::Sink) into the flush loop, with
//! restore-on-boot, adoption of dead instances' buffers, spilling while the sink is down, and
//! live counters.
//!
//! It knows no backend: it depends on `dp-core` alone (and tokio, tracing, metrics), so a
//! service that brings its own source and sink compiles no Kafka, Redis or MySQL client. The
//! default Kafka → Redis → MySQL assembly, configured from one file, is the `dp-assembly`
//! crate's.
//!
//! The library never reads the environment, installs no signal handler, no global subscriber
//! and no metrics recorder: the caller passes the parts, the [`PipelineOptions`] and a shutdown
//! future.
//!
//! ```
//! use std::sync::Arc;
//!
//! use async_trait::async_trait;
//! use dp_core::{BatchOutcome, Record, Sink, SinkError, Source, SourceError};
//! use dp_pipeline::{MemoryBuffer, Pipeline, PipelineOptions};
//!
//! /// Three records, then nothing.
//! struct Three(Vec<Record>);
//!
//! #[async_trait]
//! impl Source for Three {
//!     async fn poll(&mut self, max: usize) -> Result<Vec<Record>, SourceError> {
//!         if self.0.is_empty() {
//!             std::future::pending::<()>().await;
//!         }
//!         let n = max.min(self.0.len());
//!         Ok(self.0.drain(..n).collect())
//!     }
//! }
//!
//! /// Counts records; a real sink stores them idempotently.
//! struct Counting;
//!
//! #[async_trait]
//! impl Sink for Counting {
//!     async fn write_batch(&self, records: &[Record]) -> Result<BatchOutcome, SinkError> {
//!         Ok(BatchOutcome { inserted: records.len(), ..BatchOutcome::default() })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let records = (0..3).map(|n| Record::new("events", 0, n, Some(b"{}".to_vec()))).collect();
//! let pipeline = Pipeline::new(
//!     Box::new(Three(records)),
//!     Arc::new(MemoryBuffer::new()),
//!     Arc::new(Counting),
//!     PipelineOptions::new(),
//! )?;
//! let stats = pipeline.stats(); // read it from your own handlers while the pipeline runs
//! let summary = pipeline
//!     .run(async move {
//!         while stats.snapshot().consumed < 3 {
//!             tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//!         }
//!     })
//!     .await?;
//! assert_eq!(summary.stats.inserted, 3, "the drain at shutdown writes what was collected");
//! # Ok(()) }
//! ```

mod deliver;
mod filter;
mod flush_loop;
mod memory_buffer;
pub mod metrics;
mod options;
mod pause;
mod readiness;
mod recovery;
mod spill;
mod stats;
mod write_ahead;

pub use filter::RecordFilter;
pub use flush_loop::{Pipeline, PipelineError, RunSummary};
pub use memory_buffer::MemoryBuffer;
pub use options::{
    BatchingConfig, CommitPolicy, InvalidSetting, PipelineOptions, RetryConfig, validate_shutdown_timeout,
};
pub use pause::PauseControl;
pub use readiness::Readiness;
pub use stats::{PipelineStats, StatsSnapshot};
