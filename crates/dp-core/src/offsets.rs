//! Which offsets may be committed: the contiguous delivered prefix of each partition.
//!
//! The source registers every record it hands out, in the order it received them (which, per
//! partition, is offset order). The runtime acknowledges records as they become durable, in any
//! order. A partition's commit position is one past the last offset of the longest prefix of
//! registered records that are all acknowledged: a record that is not yet durable holds back the
//! commit of everything after it, so a commit never passes a record that could still be lost.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::Record;

/// Per-partition bookkeeping of records handed out and records delivered.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    // Keyed by topic first so lookups by `&str` need no allocation.
    topics: HashMap<Arc<str>, HashMap<i32, Partition>>,
}

#[derive(Debug, Default)]
struct Partition {
    /// Registered offsets in ascending order, with whether each is delivered.
    pending: VecDeque<(i64, bool)>,
    /// Next offset to commit that has not been reported by [`OffsetTracker::take_commits`] yet.
    unreported: Option<i64>,
}

impl Partition {
    fn register(&mut self, offset: i64) {
        if self.pending.back().is_some_and(|&(last, _)| offset <= last) {
            self.pending.clear();
        }
        self.pending.push_back((offset, false));
    }

    fn acknowledge(&mut self, offset: i64) -> bool {
        let found = match self.pending.binary_search_by_key(&offset, |&(o, _)| o) {
            Ok(i) => {
                self.pending[i].1 = true;
                true
            }
            Err(_) => false,
        };
        while let Some(&(o, true)) = self.pending.front() {
            self.pending.pop_front();
            self.unreported = Some(o + 1);
        }
        found
    }
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` of `topic`/`partition` was handed out and is not yet durable.
    ///
    /// Offsets of one partition normally arrive in ascending order. An offset at or below one
    /// already registered means the partition was re-read from an earlier position (after a
    /// rebalance or a seek): what was pending is forgotten, since those records will either be
    /// delivered by their earlier copy or read again.
    pub fn register(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        self.partition(topic, partition).register(offset);
    }

    /// [`register`](Self::register)s each of `records`, in order, looking each partition up
    /// once per run of its records rather than once per record.
    pub fn register_records(&mut self, records: &[Record]) {
        for run in records.chunk_by(Record::same_partition) {
            let p = self.partition(&run[0].topic, run[0].partition);
            for r in run {
                p.register(r.offset);
            }
        }
    }

    fn partition(&mut self, topic: &Arc<str>, partition: i32) -> &mut Partition {
        self.topics.entry(Arc::clone(topic)).or_default().entry(partition).or_default()
    }

    /// [`acknowledge`](Self::acknowledge)s each of `records`, looking each partition up once
    /// per run of its records.
    pub fn acknowledge_records(&mut self, records: &[Record]) {
        for run in records.chunk_by(Record::same_partition) {
            let Some(p) = self.topics.get_mut(&*run[0].topic).and_then(|ps| ps.get_mut(&run[0].partition))
            else {
                continue;
            };
            for r in run {
                p.acknowledge(r.offset);
            }
        }
    }

    /// Marks `offset` delivered. Returns false if the offset was not pending (already
    /// acknowledged, forgotten after a re-read, or never registered); that is harmless.
    pub fn acknowledge(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        let Some(p) = self.topics.get_mut(topic).and_then(|ps| ps.get_mut(&partition)) else {
            return false;
        };
        p.acknowledge(offset)
    }

    /// Commit positions (next offset to read) that advanced since the last call, per partition.
    pub fn take_commits(&mut self) -> Vec<(Arc<str>, i32, i64)> {
        let mut out: Vec<_> = self
            .topics
            .iter_mut()
            .flat_map(|(t, ps)| {
                ps.iter_mut().filter_map(|(p, st)| st.unreported.take().map(|o| (Arc::clone(t), *p, o)))
            })
            .collect();
        out.sort();
        out
    }

    /// Forgets a partition entirely (it was revoked): nothing more will be committed for it.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        if let Some(ps) = self.topics.get_mut(topic) {
            ps.remove(&partition);
        }
    }

    /// True when every record of `topic`/`partition` handed out is delivered (or none was).
    pub fn settled(&self, topic: &str, partition: i32) -> bool {
        self.topics
            .get(topic)
            .and_then(|ps| ps.get(&partition))
            .is_none_or(|p| p.pending.iter().all(|&(_, delivered)| delivered))
    }

    /// Records handed out and not yet delivered, over all partitions.
    pub fn pending(&self) -> usize {
        self.topics
            .values()
            .flat_map(HashMap::values)
            .map(|p| p.pending.iter().filter(|(_, d)| !d).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn t() -> Arc<str> {
        Arc::from("t")
    }

    #[test]
    fn commits_only_a_contiguous_prefix() {
        let mut tr = OffsetTracker::new();
        for o in 10..15 {
            tr.register(&t(), 0, o);
        }
        assert!(tr.acknowledge("t", 0, 12));
        assert!(tr.acknowledge("t", 0, 13));
        assert!(tr.take_commits().is_empty(), "10 and 11 are not delivered yet");
        assert!(tr.acknowledge("t", 0, 10));
        assert_eq!(tr.take_commits(), vec![(t(), 0, 11)]);
        assert!(tr.acknowledge("t", 0, 11));
        assert_eq!(tr.take_commits(), vec![(t(), 0, 14)]);
        assert!(tr.take_commits().is_empty(), "a position is reported once");
        assert_eq!(tr.pending(), 1);
    }

    #[test]
    fn partitions_are_independent() {
        let mut tr = OffsetTracker::new();
        tr.register(&t(), 0, 0);
        tr.register(&t(), 1, 0);
        tr.register(&t(), 1, 1);
        tr.acknowledge("t", 1, 1);
        tr.acknowledge("t", 1, 0);
        assert_eq!(tr.take_commits(), vec![(t(), 1, 2)]);
    }

    #[test]
    fn gaps_in_offsets_are_followed() {
        // Compacted topics and transaction markers leave holes in the offset sequence.
        let mut tr = OffsetTracker::new();
        tr.register(&t(), 0, 5);
        tr.register(&t(), 0, 9);
        tr.acknowledge("t", 0, 9);
        tr.acknowledge("t", 0, 5);
        assert_eq!(tr.take_commits(), vec![(t(), 0, 10)]);
    }

    #[test]
    fn unknown_and_repeated_acks_are_harmless() {
        let mut tr = OffsetTracker::new();
        assert!(!tr.acknowledge("t", 0, 1));
        tr.register(&t(), 0, 1);
        assert!(tr.acknowledge("t", 0, 1));
        assert!(!tr.acknowledge("t", 0, 1));
        assert_eq!(tr.take_commits(), vec![(t(), 0, 2)]);
    }

    #[test]
    fn a_reread_partition_starts_over() {
        let mut tr = OffsetTracker::new();
        tr.register(&t(), 0, 7);
        tr.register(&t(), 0, 8);
        tr.register(&t(), 0, 7); // re-read from 7 after a rebalance
        tr.acknowledge("t", 0, 7);
        assert_eq!(tr.take_commits(), vec![(t(), 0, 8)]);
        assert_eq!(tr.pending(), 0);
    }

    #[test]
    fn forgotten_partitions_commit_nothing() {
        let mut tr = OffsetTracker::new();
        tr.register(&t(), 0, 1);
        tr.forget("t", 0);
        assert!(!tr.acknowledge("t", 0, 1));
        assert!(tr.take_commits().is_empty());
    }

    #[test]
    fn a_partition_is_settled_once_everything_handed_out_is_delivered() {
        let mut tr = OffsetTracker::new();
        assert!(tr.settled("t", 0), "nothing handed out");
        tr.register(&t(), 0, 1);
        tr.register(&t(), 0, 2);
        tr.register(&t(), 1, 1);
        tr.acknowledge("t", 0, 2);
        assert!(!tr.settled("t", 0), "offset 1 is not delivered");
        tr.acknowledge("t", 0, 1);
        assert!(tr.settled("t", 0));
        assert!(!tr.settled("t", 1), "partitions are independent");
    }

    proptest! {
        /// Registering and acknowledging a slice of records, a partition's run at a time, does
        /// what one call per record does: interleaved partitions and topics, re-reads, acks of
        /// unknown offsets and repeated acks included.
        #[test]
        fn the_record_methods_match_one_call_per_record(
            handed in proptest::collection::vec((0usize..2, 0i32..3, 0i64..20), 0..60),
            acked in proptest::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..60),
        ) {
            let topics = [t(), Arc::from("u")];
            let at = |&(topic, p, o): &(usize, i32, i64)| Record::new(Arc::clone(&topics[topic]), p, o, None);
            let records: Vec<Record> = handed.iter().map(at).collect();
            let (mut one, mut batched) = (OffsetTracker::new(), OffsetTracker::new());
            for r in &records {
                one.register(&r.topic, r.partition, r.offset);
            }
            batched.register_records(&records);
            // Acknowledged: records handed out, or (the flag) an offset never handed out.
            let ack: Vec<Record> = acked
                .iter()
                .filter(|_| !records.is_empty())
                .map(|(i, unknown)| {
                    let mut r = records[i.index(records.len())].clone();
                    if *unknown {
                        r.offset += 100;
                    }
                    r
                })
                .collect();
            for r in &ack {
                one.acknowledge(&r.topic, r.partition, r.offset);
            }
            batched.acknowledge_records(&ack);
            prop_assert_eq!(one.take_commits(), batched.take_commits());
            prop_assert_eq!(one.pending(), batched.pending());
        }

        /// Whatever order acknowledgements arrive in, the reported position is always one past
        /// the longest delivered prefix, and never passes an undelivered offset.
        #[test]
        fn position_never_passes_an_undelivered_offset(
            n in 1usize..60,
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..80),
        ) {
            let mut tr = OffsetTracker::new();
            let offsets: Vec<i64> = (0..n as i64).map(|i| i * 2 + 3).collect();
            for &o in &offsets {
                tr.register(&t(), 0, o);
            }
            let mut delivered = vec![false; n];
            let mut committed: Option<i64> = None;
            for idx in order {
                let i = idx.index(n);
                tr.acknowledge("t", 0, offsets[i]);
                delivered[i] = true;
                for (_, _, pos) in tr.take_commits() {
                    prop_assert!(committed.is_none_or(|c| pos > c), "positions only advance");
                    committed = Some(pos);
                }
                let prefix = delivered.iter().take_while(|d| **d).count();
                let expected = (prefix > 0).then(|| offsets[prefix - 1] + 1);
                prop_assert_eq!(committed, expected);
            }
        }
    }
}
