//! Pausing a running pipeline for a maintenance window: [`PauseControl`].

use std::sync::Arc;

use tokio::sync::watch;

/// Pauses and resumes a running pipeline, from any task (an admin endpoint, a signal handler).
/// Cheap to clone; every clone controls the same pipeline.
///
/// Pausing lets the batches handed to the sink finish (the one being written and the next,
/// prepared behind it, if there is one), then the pipeline neither consumes nor writes:
/// what it had collected stays held (in memory and in the write-ahead buffer) until it
/// resumes, and the source stays in its consumer group (the Kafka source pauses its partitions
/// and keeps polling). Readiness reports the pause. The state lives in this process only: a
/// restarted pipeline runs. A shutdown while paused still drains what is held.
#[derive(Debug, Clone)]
pub struct PauseControl {
    state: Arc<watch::Sender<bool>>,
}

impl Default for PauseControl {
    fn default() -> Self {
        Self { state: Arc::new(watch::Sender::new(false)) }
    }
}

impl PauseControl {
    /// Pauses; `false` when it was paused already.
    pub fn pause(&self) -> bool {
        self.state.send_if_modified(|paused| !std::mem::replace(paused, true))
    }

    /// Resumes; `false` when it was not paused.
    pub fn resume(&self) -> bool {
        self.state.send_if_modified(|paused| std::mem::replace(paused, false))
    }

    /// Whether the pipeline is paused (or will be, once the batches in flight are written).
    pub fn is_paused(&self) -> bool {
        *self.state.borrow()
    }

    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_resume_say_whether_they_changed_anything() {
        let control = PauseControl::default();
        let other = control.clone();
        assert!(!control.is_paused());
        assert!(!control.resume());
        assert!(other.pause());
        assert!(control.is_paused(), "clones control one pipeline");
        assert!(!control.pause());
        assert!(control.resume());
        assert!(!other.is_paused());
    }
}
