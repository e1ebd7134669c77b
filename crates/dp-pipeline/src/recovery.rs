//! What the pipeline delivers besides what it consumes: the records an earlier run of this
//! instance left in the buffer (restored before the first poll), and the buffers of dead
//! instances (adopted while it runs, for a buffer with [`Leases`](dp_core::Leases)).

use std::sync::Arc;

use dp_core::{Batch, BufferKey, FlushTrigger, Orphan, Record, Turn};
use tokio_util::task::AbortOnDropHandle;

use crate::deliver::Deliverer;
use crate::flush_loop::PipelineError;
use crate::metrics as m;
use crate::pause::PauseControl;
use crate::stats::PipelineStats;

/// Delivers, before anything is consumed, every record an earlier run left in the buffer.
pub(crate) async fn restore(deliverer: &Arc<Deliverer>, max_rows: usize) -> Result<(), PipelineError> {
    let restored = deliverer.buffer.restore().await.map_err(PipelineError::Restore)?;
    if restored.is_empty() {
        return Ok(());
    }
    tracing::info!(records = restored.len(), "restoring records buffered by an earlier run");
    deliver_held(deliverer, restored, max_rows, FlushTrigger::Restore).await
}

/// Delivers records read from the buffer, in batches of at most `max_rows`, counting them as
/// restored or adopted (by `trigger`) as each batch is delivered.
async fn deliver_held(
    deliverer: &Arc<Deliverer>,
    held: Vec<(BufferKey, Record)>,
    max_rows: usize,
    trigger: FlushTrigger,
) -> Result<(), PipelineError> {
    let (counter, metric) = match trigger {
        FlushTrigger::Adopt => (&deliverer.stats.adopted, m::ADOPTED),
        _ => (&deliverer.stats.restored, m::RESTORED),
    };
    let mut held = held.into_iter().peekable();
    while held.peek().is_some() {
        let (keys, records): (Vec<_>, Vec<_>) = held.by_ref().take(max_rows).unzip();
        let n = records.len();
        Arc::clone(deliverer).deliver(Batch { records, keys }, trigger, Turn::now(), None).await?;
        PipelineStats::add(counter, metric, n);
    }
    Ok(())
}

/// Starts the lease heartbeat and the adoption of orphaned buffers, for a buffer with leases.
/// No orphan is claimed while `pause` says paused (a paused pipeline writes nothing); the
/// heartbeat goes on. The tasks are aborted when the handles are dropped, so none outlives
/// `run`, on any path.
pub(crate) fn leases(
    deliverer: &Arc<Deliverer>,
    max_rows: usize,
    pause: &PauseControl,
) -> Vec<AbortOnDropHandle<()>> {
    let Some(every) = deliverer.buffer.leases().map(|l| l.heartbeat_interval()) else { return Vec::new() };
    let heart = Arc::clone(deliverer);
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(leases) = heart.buffer.leases() else { return };
            if let Err(e) = leases.heartbeat().await {
                tracing::warn!(error = %e, "lease renewal failed; another instance may adopt this buffer (harmless: delivery is idempotent)");
            }
        }
    });
    let adopter = Arc::clone(deliverer);
    let pause = pause.clone();
    let adoption = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if pause.is_paused() {
                continue;
            }
            let Some(leases) = adopter.buffer.leases() else { return };
            match leases.claim_orphan().await {
                Ok(Some(orphan)) => adopt(&adopter, orphan, max_rows).await,
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "looking for orphaned buffers failed"),
            }
        }
    });
    vec![AbortOnDropHandle::new(heartbeat), AbortOnDropHandle::new(adoption)]
}

/// Delivers an orphan's records (idempotently: the dead instance may have delivered some) and
/// releases the claim. A failure leaves the claim to expire, so the orphan is tried again.
async fn adopt(deliverer: &Arc<Deliverer>, orphan: Orphan, max_rows: usize) {
    let Orphan { instance, records } = orphan;
    let total = records.len();
    if let Err(e) = deliver_held(deliverer, records, max_rows, FlushTrigger::Adopt).await {
        tracing::error!(orphan = %instance, error = %e, "adopting an orphaned buffer failed; it will be retried");
        return;
    }
    let Some(leases) = deliverer.buffer.leases() else { return };
    match leases.release_orphan(&instance).await {
        Ok(()) => {
            tracing::info!(orphan = %instance, records = total, "adopted and delivered an orphaned buffer")
        }
        Err(e) => tracing::warn!(orphan = %instance, error = %e, "releasing an adopted buffer failed"),
    }
}
