//! What a consumer group has stored of one partition: a watermark, and ranges above it.
//!
//! A row of the offsets table holds, per (group, topic, partition), `next_offset` — every offset
//! below it is stored (or held no record) — and `stored_ranges`, the ranges above it that are
//! stored too, as text: `a-b,c-d`, each `[start, end)`. A record whose offset is below the
//! watermark or inside a range is skipped: storing it again would duplicate it.
//!
//! How a batch moves the row depends on the commit policy ([`WatermarkMode`]):
//!
//! - **Prefix** (`after_sink`): Kafka commits only what is stored, so the records of a partition
//!   are stored in offset order (rule 12 of `docs/specs/delivery.md`) and nothing below a
//!   stored record can still arrive from elsewhere. The watermark is raised to one past the
//!   batch's highest offset, over any gap (transaction markers, compacted offsets).
//! - **Ranges** (`after_buffer`): Kafka commits what is in Redis, so a partition's newer records
//!   can be stored (by its new owner) before older ones that a dead instance left in Redis.
//!   Raising the watermark over them would skip them for ever. Each record adds only what it
//!   covers: its own offset, and the offsets between it and the record its consumer read just
//!   before it in the same partition ([`Record::follows`]), which held nothing to deliver.
//!   Ranges that touch merge, and the first folds into the watermark once it reaches it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use dp_core::Record;

/// How batches advance the offsets table; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatermarkMode {
    /// One watermark, raised over everything below a batch's highest offset (`after_sink`).
    #[default]
    Prefix,
    /// Exactly the offsets stored, as ranges above the watermark (`after_buffer`).
    Ranges,
}

/// The stored offsets of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stored {
    /// Every offset below this is stored.
    pub next: i64,
    /// Disjoint, sorted `[start, end)` ranges above `next`, none touching another or `next`.
    above: Vec<(i64, i64)>,
}

impl Stored {
    /// Reads a row: its watermark and its `stored_ranges` text (`None` or empty: no ranges).
    pub fn parse(next: i64, ranges: Option<&str>) -> Result<Self, String> {
        let mut s = Self { next, above: Vec::new() };
        for part in ranges.unwrap_or_default().split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parsed = part
                .split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse::<i64>().ok()?, b.trim().parse::<i64>().ok()?)));
            match parsed {
                Some((a, b)) if a < b => s.add(a, b),
                _ => return Err(format!("`{part}` is not a range `start-end` with start < end")),
            }
        }
        Ok(s)
    }

    /// The `stored_ranges` text of the row; `None` when every stored offset is below `next`.
    pub fn ranges_text(&self) -> Option<String> {
        if self.above.is_empty() {
            return None;
        }
        let mut out = String::new();
        for (i, (a, b)) in self.above.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{a}-{b}");
        }
        Some(out)
    }

    /// The ranges above the watermark.
    pub fn ranges(&self) -> &[(i64, i64)] {
        &self.above
    }

    /// Whether `offset` is stored already.
    pub fn contains(&self, offset: i64) -> bool {
        if offset < self.next {
            return true;
        }
        // The last range starting at or before `offset`.
        let i = self.above.partition_point(|&(a, _)| a <= offset);
        i > 0 && offset < self.above[i - 1].1
    }

    /// Marks `[start, end)` stored.
    pub fn add(&mut self, start: i64, end: i64) {
        if end <= start || end <= self.next {
            return;
        }
        let (mut start, mut end) = (start.max(self.next), end);
        // Merge with every range that overlaps or touches [start, end).
        let mut kept = Vec::with_capacity(self.above.len() + 1);
        for &(a, b) in &self.above {
            if b < start || a > end {
                kept.push((a, b));
            } else {
                start = start.min(a);
                end = end.max(b);
            }
        }
        let at = kept.partition_point(|&(a, _)| a < start);
        kept.insert(at, (start, end));
        self.above = kept;
        self.fold();
    }

    /// Raises the watermark to `next` (never lowers it), over any gap below.
    pub fn raise(&mut self, next: i64) {
        self.next = self.next.max(next);
        self.fold();
    }

    /// Folds ranges that reach the watermark into it, and drops ranges below it.
    fn fold(&mut self) {
        let mut next = self.next;
        self.above.retain(|&(a, b)| {
            if a <= next {
                next = next.max(b);
                false
            } else {
                true
            }
        });
        self.next = next;
    }
}

/// What `records` cover, per (topic, partition), under `mode`: for [`WatermarkMode::Prefix`]
/// everything below one past the highest offset; for [`WatermarkMode::Ranges`] each record's
/// offset and the empty offsets before it back to the one it follows.
pub fn coverage<'r>(
    records: impl IntoIterator<Item = &'r Record>,
    mode: WatermarkMode,
) -> BTreeMap<(&'r str, i32), Vec<(i64, i64)>> {
    let mut out: BTreeMap<(&str, i32), Vec<(i64, i64)>> = BTreeMap::new();
    for r in records {
        let from = match (mode, r.follows) {
            (WatermarkMode::Prefix, _) => i64::MIN,
            (WatermarkMode::Ranges, Some(f)) if f < r.offset => f + 1,
            (WatermarkMode::Ranges, _) => r.offset,
        };
        let ranges = out.entry((&*r.topic, r.partition)).or_default();
        match (mode, ranges.last_mut()) {
            (WatermarkMode::Prefix, Some(last)) => last.1 = last.1.max(r.offset + 1),
            // Records of a partition usually come in offset order: extend the last range.
            (WatermarkMode::Ranges, Some(last)) if from <= last.1 && r.offset + 1 >= last.0 => {
                last.0 = last.0.min(from);
                last.1 = last.1.max(r.offset + 1);
            }
            _ => ranges.push((from, r.offset + 1)),
        }
    }
    out
}

/// Applies what a batch covers to a partition's stored offsets.
pub fn apply(stored: &mut Stored, covered: &[(i64, i64)], mode: WatermarkMode) {
    for &(a, b) in covered {
        match mode {
            WatermarkMode::Prefix => stored.raise(b),
            WatermarkMode::Ranges => stored.add(a, b),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn rec(offset: i64, follows: Option<i64>) -> Record {
        let mut r = Record::new("t", 0, offset, None);
        r.follows = follows;
        r
    }

    #[test]
    fn ranges_merge_and_fold_into_the_watermark() {
        let mut s = Stored::parse(100, None).expect("parse");
        s.add(200, 300);
        s.add(350, 400);
        assert_eq!(s.ranges_text().as_deref(), Some("200-300,350-400"));
        assert!(s.contains(99) && !s.contains(100) && s.contains(250) && !s.contains(300));
        assert!(!s.contains(349) && s.contains(350) && !s.contains(400));
        // An orphan's older run, stored late, closes the hole below the new owner's rows.
        s.add(100, 200);
        assert_eq!((s.next, s.ranges_text()), (300, Some("350-400".into())));
        s.add(300, 350);
        assert_eq!((s.next, s.ranges_text()), (400, None));
        // Never lowers the watermark.
        s.add(10, 20);
        assert_eq!(s.next, 400);
    }

    #[test]
    fn prefix_mode_raises_over_gaps_and_swallows_ranges_below() {
        let mut s = Stored::parse(0, Some("10-20,40-50")).expect("parse");
        apply(&mut s, &[(i64::MIN, 30)], WatermarkMode::Prefix);
        assert_eq!((s.next, s.ranges_text()), (30, Some("40-50".into())));
        apply(&mut s, &[(i64::MIN, 45)], WatermarkMode::Prefix);
        assert_eq!((s.next, s.ranges_text()), (50, None));
        apply(&mut s, &[(i64::MIN, 5)], WatermarkMode::Prefix);
        assert_eq!(s.next, 50, "never lowered");
    }

    #[test]
    fn a_record_covers_the_empty_offsets_since_the_one_it_follows() {
        // 11 and 14 are transaction markers: the consumer read 10, 12, 13, 15 in a row.
        let batch = [rec(12, Some(10)), rec(13, Some(12)), rec(15, Some(13))];
        let c = coverage(&batch, WatermarkMode::Ranges);
        assert_eq!(c[&("t", 0)], vec![(11, 16)]);
        // Without `follows` (restored from Redis, or a source that does not say), only the
        // offsets themselves.
        let batch = [rec(12, None), rec(13, None), rec(15, None)];
        assert_eq!(coverage(&batch, WatermarkMode::Ranges)[&("t", 0)], vec![(12, 14), (15, 16)]);
        assert_eq!(coverage(&batch, WatermarkMode::Prefix)[&("t", 0)], vec![(i64::MIN, 16)]);
    }

    #[test]
    fn malformed_text_is_refused_with_the_part_named() {
        assert!(Stored::parse(0, Some("")).is_ok());
        let e = Stored::parse(0, Some("1-5,7-x")).expect_err("bad");
        assert!(e.contains("`7-x`"), "{e}");
        assert!(Stored::parse(0, Some("9-3")).is_err());
    }

    proptest! {
        /// Adding ranges in any order stores exactly their union: `contains` agrees with a
        /// plain set, the text round-trips, and nothing outside the union is ever covered.
        #[test]
        fn the_stored_set_is_exactly_the_union_added(
            next in 0i64..20,
            ranges in proptest::collection::vec((0i64..200, 1i64..20), 0..30),
        ) {
            let mut s = Stored::parse(next, None).expect("parse");
            let mut model: BTreeSet<i64> = (0..next).collect();
            for (a, len) in ranges {
                s.add(a, a + len);
                model.extend(a..a + len);
            }
            for o in 0..250 {
                prop_assert_eq!(s.contains(o), model.contains(&o), "offset {}", o);
            }
            let again = Stored::parse(s.next, s.ranges_text().as_deref()).expect("round trip");
            prop_assert_eq!(&again, &s);
            prop_assert!(s.ranges().windows(2).all(|w| w[0].1 < w[1].0), "disjoint, sorted, not touching");
            prop_assert!(s.ranges().first().is_none_or(|r| r.0 > s.next));
        }
    }
}
