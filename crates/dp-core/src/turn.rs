//! A batch's turn: the order in which batches written concurrently may make their writes
//! durable.
//!
//! The runtime hands a batch to the sink while the batch before it is still being written, so
//! the store never waits for the runtime between two batches. Each batch gets a [`Turn`] that
//! comes once the batch before it is durable (its [`TurnDone`] was signalled). Before its turn
//! a sink may prepare (map records, build statements); from its turn on it writes. Batches of a
//! partition therefore become durable in offset order, which a watermark (the next offset not
//! yet stored, raised by each batch) relies on: a later batch never commits while an earlier
//! one is still being retried.

use tokio::sync::watch;

use crate::error::SinkError;

/// When a batch may start writing: at once, or once the batch before it is durable.
#[derive(Debug, Clone, Default)]
pub struct Turn(Option<watch::Receiver<bool>>);

/// Signals the [`Turn`] of the next batch. Dropped without [`TurnDone::done`] (the batch
/// failed, or its task ended), it tells the next batch that its turn will never come.
#[derive(Debug)]
pub struct TurnDone(watch::Sender<bool>);

impl Turn {
    /// A turn that has come: nothing is written before this batch.
    pub fn now() -> Self {
        Self(None)
    }

    /// A turn that comes when the returned [`TurnDone`] is signalled.
    pub fn after() -> (TurnDone, Self) {
        let (tx, rx) = watch::channel(false);
        (TurnDone(tx), Self(Some(rx)))
    }

    /// Waits for the turn. `Err` (transient) when the batch before will never be durable: the
    /// runtime stops without writing this batch, which is then still in the write-ahead buffer
    /// and uncommitted in the source.
    pub async fn wait(&self) -> Result<(), SinkError> {
        let Some(rx) = &self.0 else { return Ok(()) };
        match rx.clone().wait_for(|done| *done).await {
            Ok(_) => Ok(()),
            Err(_) => Err(SinkError::transient(
                "the batch before this one was not written, so this one was not either",
            )),
        }
    }

    /// Whether the turn has come (waiting would return at once with `Ok`).
    pub fn has_come(&self) -> bool {
        self.0.as_ref().is_none_or(|rx| *rx.borrow())
    }

    /// Whether the turn will never come: the batch before failed.
    pub fn is_abandoned(&self) -> bool {
        self.0.as_ref().is_some_and(|rx| !*rx.borrow() && rx.has_changed().is_err())
    }

    /// Completes when the turn will never come: the batch before failed. Pending otherwise,
    /// also after the turn came.
    pub async fn abandoned(&self) {
        if self.wait().await.is_ok() {
            std::future::pending::<()>().await;
        }
    }
}

impl TurnDone {
    /// The batch is durable: the next one may write.
    pub fn done(self) {
        // No receiver left means no next batch: nothing to tell.
        let _ = self.0.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready<F: std::future::Future>(f: F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn a_turn_comes_only_when_the_batch_before_is_done() {
        assert!(ready(Turn::now().wait()).is_some_and(|r| r.is_ok()));
        let (done, turn) = Turn::after();
        let second = turn.clone();
        assert!(ready(turn.wait()).is_none(), "waits while the batch before is written");
        assert!(!turn.has_come());
        assert!(ready(turn.abandoned()).is_none());
        done.done();
        assert!(turn.has_come());
        assert!(ready(turn.wait()).is_some_and(|r| r.is_ok()));
        assert!(ready(second.wait()).is_some_and(|r| r.is_ok()), "every clone sees it");
        assert!(ready(turn.abandoned()).is_none(), "a turn that came is never abandoned");
        assert!(!turn.is_abandoned());
        assert!(!Turn::now().is_abandoned());
    }

    #[test]
    fn a_batch_that_fails_abandons_the_next_one_s_turn() {
        let (done, turn) = Turn::after();
        drop(done);
        assert!(!turn.has_come());
        assert!(turn.is_abandoned());
        let waited = ready(turn.wait()).expect("no waiting for a batch that failed");
        assert!(waited.is_err_and(|e| e.is_transient()));
        assert!(ready(turn.abandoned()).is_some());
    }
}
