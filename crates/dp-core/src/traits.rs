//! The three traits that connect a pipeline: [`Source`], [`Buffer`] and [`Sink`].
//!
//! [`Source`] and [`Sink`] have one required method each; [`Buffer`] has the three that
//! durability needs (`append`, `remove`, `restore`). What a buffer may do beyond that is a
//! capability of its own, which the runtime asks for: [`ReadBack`] (records read back, so
//! batches can be held in the buffer alone while the sink is down) and [`Leases`] (adoption of
//! a dead instance's buffer). Every part may report its [`Health`].
//!
//! They are object safe (the runtime holds them as `Box<dyn …>` / `Arc<dyn …>`), which
//! `object_safety` below checks at compile time.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{BufferError, SinkError, SourceError};
use crate::record::Record;
use crate::turn::Turn;

/// Where records come from.
///
/// # Contract
/// - [`poll`](Source::poll) is cancellation safe: records received before a cancelled call are
///   returned by the next call, never dropped.
/// - Within a partition, records are returned in offset order.
/// - The source advances its committed position only over records passed to
///   [`acknowledge`](Source::acknowledge), and only over a contiguous prefix per partition.
#[async_trait]
pub trait Source: Send {
    /// Waits for records and returns at most `max` of them (`max` is at least 1). It returns
    /// early, possibly with none, when partitions were revoked (see [`Source::revoked`]).
    async fn poll(&mut self, max: usize) -> Result<Vec<Record>, SourceError>;

    /// True when partitions were taken away since the last call: the runtime then flushes what
    /// it buffered at once, so the new owner finds it stored.
    fn revoked(&mut self) -> bool {
        false
    }

    /// Reports records as delivered: written to the sink or dead-lettered.
    fn acknowledge(&mut self, delivered: &[Record]) -> Result<(), SourceError> {
        let _ = delivered;
        Ok(())
    }

    /// Commits the acknowledged position now (normally this happens periodically).
    async fn commit(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// Leaves the consumer group or otherwise releases the source.
    async fn close(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// A probe of the source's own state (broker connections, say) for readiness checks,
    /// taken once when the pipeline is built; `None` when the source has nothing to report.
    fn health(&self) -> Option<Arc<dyn Health>> {
        None
    }
}

/// What a part reports to a readiness probe: read from a probe's thread while the pipeline
/// runs, so it must be cheap and must not block.
pub trait Health: Send + Sync {
    /// One line per problem, naming the part (`kafka: no broker connection is up`); empty when
    /// the part can do its work.
    fn problems(&self) -> Vec<String>;
}

/// Opaque handle of one record's write-ahead copy.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferKey(pub String);

impl From<&str> for BufferKey {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Debug for BufferKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The write-ahead copy of the records held in memory.
///
/// Records are appended when they arrive and removed once delivered; whatever is left when a
/// process dies is restored (and delivered) by the next process that starts with the same
/// identity. The three required methods are what that takes: a buffer that cannot remove or
/// restore cannot be written, rather than compiling and silently keeping nothing.
#[async_trait]
pub trait Buffer: Send + Sync {
    /// Stores `records` and returns one key per record, in the same order. Returns `Ok` only
    /// once every copy is stored as durably as this buffer stores anything.
    async fn append(&self, records: &[Record]) -> Result<Vec<BufferKey>, BufferError>;

    /// Deletes the copies of delivered records. Deleting a missing key is not an error.
    async fn remove(&self, keys: &[BufferKey]) -> Result<(), BufferError>;

    /// Every record left by an earlier run of this instance, in arrival order. The runtime
    /// delivers them before it consumes anything, then removes them.
    async fn restore(&self) -> Result<Vec<(BufferKey, Record)>, BufferError>;

    /// Checks that the buffer answers.
    async fn healthcheck(&self) -> Result<(), BufferError> {
        Ok(())
    }

    /// Releases connections (and, for a leased buffer, this instance's lease).
    async fn close(&self) -> Result<(), BufferError> {
        Ok(())
    }

    /// Reading records back, when this buffer can: the runtime then keeps collecting while
    /// the sink is down, holding whole batches in the buffer alone (up to
    /// `max_buffered_rows`); without it, consumption pauses once memory is full.
    fn read_back(&self) -> Option<&dyn ReadBack> {
        None
    }

    /// Leases, when this buffer has them: the runtime renews this instance's lease and adopts
    /// the buffers of instances whose lease expired. Without them nothing is ever adopted; a
    /// dead instance's records wait for an instance with its identity.
    fn leases(&self) -> Option<&dyn Leases> {
        None
    }

    /// A probe of the buffer's own state for readiness checks (see [`Source::health`]).
    fn health(&self) -> Option<Arc<dyn Health>> {
        None
    }
}

/// A [`Buffer`] capability: reading records back by key.
#[async_trait]
pub trait ReadBack: Send + Sync {
    /// Reads back the records stored under `keys` by this instance's
    /// [`append`](Buffer::append), in the same order; `None` where a key no longer exists.
    async fn fetch(&self, keys: &[BufferKey]) -> Result<Vec<Option<Record>>, BufferError>;
}

/// A [`Buffer`] capability: a lease per instance, renewed while it lives, so that another
/// instance can adopt (deliver and remove) the buffer of one that died for good.
#[async_trait]
pub trait Leases: Send + Sync {
    /// How often [`heartbeat`](Leases::heartbeat) must run.
    fn heartbeat_interval(&self) -> Duration;

    /// Renews this instance's lease, telling other instances it is alive.
    async fn heartbeat(&self) -> Result<(), BufferError>;

    /// Claims the buffer of one other instance whose lease expired, if there is one, and
    /// returns its records in arrival order. Only one claimer wins a given orphan.
    async fn claim_orphan(&self) -> Result<Option<Orphan>, BufferError>;

    /// Ends a claim once the orphan's records are delivered and removed.
    async fn release_orphan(&self, instance: &str) -> Result<(), BufferError>;
}

/// The buffer of an instance that stopped renewing its lease, claimed for delivery.
#[derive(Debug)]
pub struct Orphan {
    /// The dead instance's id.
    pub instance: String,
    /// Its records in arrival order, with their keys.
    pub records: Vec<(BufferKey, Record)>,
}

/// How a batch ended in the sink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Records written as new rows.
    pub inserted: usize,
    /// Records that replaced an existing row's values (an upsert that won).
    pub updated: usize,
    /// Records that removed a row, or marked it deleted: a tombstone under
    /// `write.delete = "tombstone"`.
    pub deleted: usize,
    /// Records that changed nothing: already stored (redelivery, restore, a producer
    /// duplicate), or an upsert that lost to a newer row or to a later record of its batch.
    pub duplicates: usize,
    /// Records the sink refused and put in its dead-letter destination.
    pub dead_lettered: usize,
    /// `dead_lettered` by class (`invalid_json`, `field_too_long`, …), as
    /// [`BatchOutcome::dead_letter`] records it. The runtime counts every dead letter in
    /// `dp_dead_lettered_total{class}`; those no class accounts for count as `unclassified`.
    pub dead_letter_classes: Vec<(String, usize)>,
}

impl std::ops::AddAssign for BatchOutcome {
    fn add_assign(&mut self, o: Self) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.deleted += o.deleted;
        self.duplicates += o.duplicates;
        self.dead_lettered += o.dead_lettered;
        for (class, n) in o.dead_letter_classes {
            self.add_class(&class, n);
        }
    }
}

impl BatchOutcome {
    /// Counts one record dead-lettered with `class`.
    pub fn dead_letter(&mut self, class: &str) {
        self.dead_lettered += 1;
        self.add_class(class, 1);
    }

    fn add_class(&mut self, class: &str, n: usize) {
        match self.dead_letter_classes.iter_mut().find(|(c, _)| c == class) {
            Some((_, count)) => *count += n,
            None => self.dead_letter_classes.push((class.to_owned(), n)),
        }
    }

    /// Every record accounted for.
    pub fn total(&self) -> usize {
        self.inserted + self.updated + self.deleted + self.duplicates + self.dead_lettered
    }
}

/// A record that cannot be stored, with why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The record, unchanged.
    pub record: Record,
    /// A short machine-readable class (`invalid_json`, `field_too_long`, `mysql_error`, …).
    pub error_class: String,
    /// The store's error code when the store refused it.
    pub code: Option<u32>,
    /// The store's SQLSTATE when the store refused it.
    pub sqlstate: Option<String>,
    /// A human-readable reason.
    pub reason: String,
}

/// Where records go.
///
/// `write_batch` must be idempotent: the same record written twice leaves one copy, since a
/// crash between a write and its acknowledgement replays the batch. It returns `Ok` only when
/// every record of the batch is durable (stored, already present, or dead-lettered).
#[async_trait]
pub trait Sink: Send + Sync {
    /// Writes a batch of records, all or nothing.
    async fn write_batch(&self, records: &[Record]) -> Result<BatchOutcome, SinkError>;

    /// Writes a batch once its `turn` comes: the runtime hands a batch over while the one
    /// before it is still being written, so that the store goes on to it without waiting.
    ///
    /// Before the turn, a sink may only prepare: map records, build statements, fetch what it
    /// needs to decode them. It must not write, and must not take a lock the batch before
    /// needs. From the turn on it writes as [`write_batch`](Sink::write_batch) does. When
    /// [`Turn::wait`] fails, the batch before failed: return its error without writing.
    ///
    /// The default waits for the turn, then calls `write_batch`; it is correct for every sink
    /// and prepares nothing ahead.
    async fn write_batch_in_turn(&self, records: &[Record], turn: &Turn) -> Result<BatchOutcome, SinkError> {
        turn.wait().await?;
        self.write_batch(records).await
    }

    /// Stores records that the sink refused permanently. A sink without a dead-letter
    /// destination keeps this default, and the runtime stops rather than drop the record.
    async fn dead_letter(&self, entries: &[DeadLetter]) -> Result<(), SinkError> {
        let _ = entries;
        Err(SinkError::permanent("this sink has no dead-letter destination"))
    }

    /// Checks that the sink's store answers.
    async fn healthcheck(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// A probe of the sink's own state for readiness checks (see [`Source::health`]).
    fn health(&self) -> Option<Arc<dyn Health>> {
        None
    }

    /// Releases connections.
    async fn close(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A further destination for dead letters, such as a Kafka topic. A sink that supports one
/// publishes a batch's dead letters there *before* it commits the batch, so a crash can repeat
/// an entry in it (at least once) but never lose one.
#[async_trait]
pub trait DeadLetterPublisher: Send + Sync {
    /// Publishes `entries` and returns once the destination acknowledged every one.
    async fn publish(&self, entries: &[DeadLetter]) -> Result<(), SinkError>;
}

/// Durable progress recorded outside the source: for each partition, the next offset whose
/// record is not yet stored. A source consults it when it is assigned a partition, and starts
/// reading from the larger of this and its own committed position, so records the store
/// already holds are not read (and written) again.
#[async_trait]
pub trait Watermarks: Send + Sync {
    /// Next offsets of `partitions` (topic, partition); partitions without one are left out.
    async fn next_offsets(&self, partitions: &[(String, i32)]) -> Result<Vec<(String, i32, i64)>, SinkError>;
}

#[cfg(test)]
mod object_safety {
    use super::*;

    // Compiles only while the traits stay object safe.
    #[allow(dead_code, clippy::too_many_arguments)]
    fn boxed(
        _: Box<dyn Source>,
        _: std::sync::Arc<dyn Buffer>,
        _: std::sync::Arc<dyn Sink>,
        _: std::sync::Arc<dyn Watermarks>,
        _: std::sync::Arc<dyn DeadLetterPublisher>,
        _: &dyn ReadBack,
        _: &dyn Leases,
        _: std::sync::Arc<dyn Health>,
    ) {
    }
}
