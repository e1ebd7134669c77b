//! Whether a running pipeline can do its work, for a readiness probe.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use dp_core::Health;

use crate::{PauseControl, PipelineStats};

/// Reads a running pipeline's state: ready while it consumes, the sink and the buffer answer
/// (and the sink takes the statements: a statement or schema fault is not ready either), and
/// each part's own [`Health`] probe reports no problem (the Kafka source's: a broker is
/// reachable, no partition paused), and no operator has paused it
/// ([`PauseControl`]). Cheap to clone and to check.
#[derive(Clone)]
pub struct Readiness {
    pub(crate) stats: Arc<PipelineStats>,
    pub(crate) parts: Vec<Arc<dyn Health>>,
    pub(crate) pause: PauseControl,
}

impl Readiness {
    /// `Ok` when ready; otherwise one line per part that is not.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut not_ready = Vec::new();
        if self.pause.is_paused() {
            not_ready.push(
                "pipeline: paused by an operator; nothing is consumed or written until it is resumed"
                    .to_owned(),
            );
        }
        if self.stats.consuming.load(Relaxed) == 0 {
            not_ready
                .push("pipeline: not consuming (restoring the buffer at startup, or draining)".to_owned());
        }
        if self.stats.sink_failing.load(Relaxed) == 1 {
            if self.stats.sink_statement_fault.load(Relaxed) == 1 {
                let error =
                    self.stats.statement_error.lock().ok().and_then(|e| e.clone()).unwrap_or_default();
                not_ready.push(format!(
                    "mysql: statement or schema fault{error}: every row is refused alike, so the table or the mapping is wrong (the log names the error); the batch is retried with backoff, nothing is dead-lettered"
                ));
            } else {
                not_ready.push("mysql: failing; the current batch is being retried with backoff".to_owned());
            }
        }
        if self.stats.buffer_down.load(Relaxed) == 1 {
            not_ready.push("redis: unreachable; messages are held in memory only".to_owned());
        }
        for part in &self.parts {
            not_ready.extend(part.problems());
        }
        if not_ready.is_empty() { Ok(()) } else { Err(not_ready) }
    }
}
