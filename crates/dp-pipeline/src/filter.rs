//! Dropping records before they are written ahead or stored: the [`RecordFilter`] a host
//! gives the runtime ([`PipelineOptions::filter`](crate::PipelineOptions::filter)), and how the
//! flush loop applies it to each chunk the source hands out.
//!
//! A dropped record is acknowledged (its offset advances like a delivered one's), never written
//! to the buffer or the sink, and counted in `dp_filtered_total{reason}`.

use std::collections::HashMap;
use std::sync::Arc;

use dp_core::Record;

/// Decides which records the pipeline drops before they are written ahead or stored.
///
/// Called once per record, on the flush loop's task, in the order the source handed the
/// records out: keep it cheap and never block. The default pipeline's `[[filter]]` rules
/// (`dp_assembly::Filters`) implement it.
pub trait RecordFilter: Send + Sync + std::fmt::Debug {
    /// `Some(reason)` drops `record`; the reason labels `dp_filtered_total{reason}` (keep the
    /// set of reasons small and fixed, as for any metric label). `None` keeps it.
    fn drop_reason(&self, record: &Record) -> Option<&str>;
}

/// What [`Filtering::apply`] made of one chunk.
#[derive(Debug, Default)]
pub(crate) struct Split {
    /// Records to write ahead and store, in the source's order.
    pub(crate) kept: Vec<Record>,
    /// Records dropped: to acknowledge, never to store.
    pub(crate) dropped: Vec<Record>,
    /// How many were dropped per reason.
    pub(crate) reasons: Vec<(String, usize)>,
}

/// A partition's last record handed out, when it was dropped: its offset, and what it followed.
type DroppedLast = (i64, Option<i64>);

/// Applies a filter chunk after chunk, keeping what crosses chunks: per partition, the last
/// record handed out when it was dropped.
#[derive(Debug)]
pub(crate) struct Filtering {
    filter: Arc<dyn RecordFilter>,
    /// Per topic and partition: the offset of the last record handed out, when it was dropped,
    /// and what that record followed. Keyed by topic first so a record looks its partition up
    /// by the topic's `&str`, without a key of its own.
    dropped_last: HashMap<Arc<str>, HashMap<i32, DroppedLast>>,
}

impl Filtering {
    pub(crate) fn new(filter: Arc<dyn RecordFilter>) -> Self {
        Self { filter, dropped_last: HashMap::new() }
    }

    /// Splits a chunk into the records kept and those dropped.
    ///
    /// A dropped offset is one the sink never sees, like a transaction marker: a kept record
    /// that [follows](Record::follows) a dropped one is made to follow what that one followed,
    /// so a sink that records exactly the offsets it stored counts the dropped ones as stored
    /// with it, and its record of a partition stays contiguous.
    pub(crate) fn apply(&mut self, records: Vec<Record>) -> Split {
        let mut split = Split { kept: Vec::with_capacity(records.len()), ..Split::default() };
        for mut record in records {
            let pending = self.dropped_last.get(&*record.topic).and_then(|p| p.get(&record.partition));
            if let (Some(follows), Some(&(dropped, before))) = (record.follows, pending)
                && follows == dropped
            {
                record.follows = before;
            }
            match self.filter.drop_reason(&record) {
                Some(reason) => {
                    match split.reasons.iter_mut().find(|(r, _)| r == reason) {
                        Some((_, n)) => *n += 1,
                        None => split.reasons.push((reason.to_owned(), 1)),
                    }
                    // A dropped record that follows nothing read before it (the first after an
                    // assignment) is covered from its own offset by the next kept one.
                    let before = record.follows.or(Some(record.offset - 1));
                    let partitions = self.dropped_last.entry(Arc::clone(&record.topic)).or_default();
                    partitions.insert(record.partition, (record.offset, before));
                    split.dropped.push(record);
                }
                None => {
                    if let Some(partitions) = self.dropped_last.get_mut(&*record.topic) {
                        partitions.remove(&record.partition);
                    }
                    split.kept.push(record);
                }
            }
        }
        split
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops records whose payload is `drop`.
    #[derive(Debug)]
    struct DropMarked;

    impl RecordFilter for DropMarked {
        fn drop_reason(&self, record: &Record) -> Option<&str> {
            (record.payload.as_deref() == Some(b"drop".as_slice())).then_some("marked")
        }
    }

    fn record(partition: i32, offset: i64, follows: Option<i64>, payload: &str) -> Record {
        Record { follows, ..Record::new("t", partition, offset, Some(payload.as_bytes().to_vec())) }
    }

    fn offsets(records: &[Record]) -> Vec<(i32, i64, Option<i64>)> {
        records.iter().map(|r| (r.partition, r.offset, r.follows)).collect()
    }

    #[test]
    fn dropped_records_are_split_off_and_counted_per_reason() {
        let mut f = Filtering::new(Arc::new(DropMarked));
        let split = f.apply(vec![
            record(0, 0, None, "keep"),
            record(0, 1, Some(0), "drop"),
            record(1, 0, None, "drop"),
            record(0, 2, Some(1), "keep"),
        ]);
        assert_eq!(offsets(&split.dropped), [(0, 1, Some(0)), (1, 0, None)]);
        assert_eq!(split.reasons, [("marked".to_owned(), 2)]);
        // Offset 2 now follows 0: offset 1 is covered with it, like a transaction marker.
        assert_eq!(offsets(&split.kept), [(0, 0, None), (0, 2, Some(0))]);
    }

    #[test]
    fn a_dropped_record_that_follows_nothing_is_covered_from_its_own_offset() {
        let mut f = Filtering::new(Arc::new(DropMarked));
        let split = f.apply(vec![
            record(0, 40, None, "drop"),
            record(0, 41, Some(40), "drop"),
            record(0, 43, Some(41), "keep"),
        ]);
        assert_eq!(offsets(&split.kept), [(0, 43, Some(39))], "43 covers 40 to 42");
    }

    #[test]
    fn a_run_of_drops_across_chunks_is_covered_by_the_next_kept_record() {
        let mut f = Filtering::new(Arc::new(DropMarked));
        let first = f.apply(vec![record(0, 5, Some(4), "keep"), record(0, 6, Some(5), "drop")]);
        assert_eq!(offsets(&first.kept), [(0, 5, Some(4))]);
        let second = f.apply(vec![record(0, 7, Some(6), "drop"), record(0, 9, Some(7), "keep")]);
        assert_eq!(offsets(&second.kept), [(0, 9, Some(5))], "9 covers 6, 7 and the empty 8");
    }

    #[test]
    fn a_record_that_follows_something_else_keeps_its_own() {
        let mut f = Filtering::new(Arc::new(DropMarked));
        f.apply(vec![record(0, 6, Some(5), "drop")]);
        // A read that restarted elsewhere (a seek, a rebalance) does not follow the drop.
        let split = f.apply(vec![record(0, 20, None, "keep"), record(0, 21, Some(20), "keep")]);
        assert_eq!(offsets(&split.kept), [(0, 20, None), (0, 21, Some(20))]);
        let split = f.apply(vec![record(0, 30, Some(29), "keep")]);
        assert_eq!(offsets(&split.kept), [(0, 30, Some(29))]);
    }
}
