//! A write-ahead buffer in this process's memory, for tests and for embedding where the
//! source alone can replay what was not delivered.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use dp_core::{Buffer, BufferError, BufferKey, ReadBack, Record};

/// Keeps the write-ahead copies in this process's memory.
///
/// **No durability.** What it holds dies with the process: it survives neither a crash nor a
/// restart, and another process cannot adopt it. With it, a pipeline loses nothing only when
/// the source still has every record that was not delivered — as Kafka does under
/// [`CommitPolicy::AfterSink`](crate::CommitPolicy::AfterSink), which commits past a record
/// only once the sink stored it. Never pair it with
/// [`CommitPolicy::AfterBuffer`](crate::CommitPolicy::AfterBuffer): that policy lets the source
/// forget records this buffer holds, and a crash would lose them.
///
/// Within one process it behaves as a durable buffer does: records appended and not removed
/// are restored by the next [`Pipeline`](crate::Pipeline) run on the same buffer (a pipeline
/// restarted in place), and they can be read back, so batches are held here while the sink is
/// down (up to `buffer.max_buffered_rows`, all of it in memory).
#[derive(Debug, Default)]
pub struct MemoryBuffer {
    next: AtomicU64,
    records: Mutex<BTreeMap<u64, Record>>,
}

impl MemoryBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records held (appended and not removed).
    pub fn len(&self) -> usize {
        self.held().map_or(0, |r| r.len())
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn held(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<u64, Record>>, BufferError> {
        self.records.lock().map_err(|_| BufferError::permanent("the memory buffer's lock is poisoned"))
    }
}

/// Keys are `mem:<sequence>`; anything else is a key this buffer never handed out.
fn sequence(key: &BufferKey) -> Option<u64> {
    key.0.strip_prefix("mem:")?.parse().ok()
}

#[async_trait]
impl Buffer for MemoryBuffer {
    async fn append(&self, records: &[Record]) -> Result<Vec<BufferKey>, BufferError> {
        let mut held = self.held()?;
        let first = self.next.fetch_add(records.len() as u64, Ordering::Relaxed);
        let mut keys = Vec::with_capacity(records.len());
        for (n, record) in (first..).zip(records) {
            held.insert(n, record.clone());
            keys.push(BufferKey(format!("mem:{n}")));
        }
        Ok(keys)
    }

    async fn remove(&self, keys: &[BufferKey]) -> Result<(), BufferError> {
        let mut held = self.held()?;
        for n in keys.iter().filter_map(sequence) {
            held.remove(&n);
        }
        Ok(())
    }

    async fn restore(&self) -> Result<Vec<(BufferKey, Record)>, BufferError> {
        let held = self.held()?;
        Ok(held.iter().map(|(n, r)| (BufferKey(format!("mem:{n}")), r.clone())).collect())
    }

    fn read_back(&self) -> Option<&dyn ReadBack> {
        Some(self)
    }
}

#[async_trait]
impl ReadBack for MemoryBuffer {
    async fn fetch(&self, keys: &[BufferKey]) -> Result<Vec<Option<Record>>, BufferError> {
        let held = self.held()?;
        Ok(keys.iter().map(|k| sequence(k).and_then(|n| held.get(&n).cloned())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: i64) -> Record {
        Record::new("t", 0, offset, Some(b"{}".to_vec()))
    }

    #[tokio::test]
    async fn what_is_not_removed_is_restored_in_arrival_order_and_can_be_read_back() {
        let buffer = MemoryBuffer::new();
        let keys = buffer.append(&[rec(0), rec(1), rec(2)]).await.expect("append");
        let later = buffer.append(&[rec(3)]).await.expect("append");
        buffer.remove(&keys[1..2]).await.expect("remove");
        buffer.remove(&[BufferKey::from("not-mine")]).await.expect("a foreign key is not an error");
        let restored: Vec<i64> =
            buffer.restore().await.expect("restore").iter().map(|(_, r)| r.offset).collect();
        assert_eq!(restored, [0, 2, 3]);
        let fetched = buffer.fetch(&[keys[1].clone(), later[0].clone()]).await.expect("fetch");
        assert_eq!(fetched.iter().map(|r| r.as_ref().map(|r| r.offset)).collect::<Vec<_>>(), [None, Some(3)]);
        assert_eq!(buffer.len(), 3);
    }
}
