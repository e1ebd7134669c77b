//! The offset watermark: per partition, the next offset not yet stored, kept in the same
//! transaction as the rows (`pipeline_offsets`), read on assignment, locked and raised by every
//! batch; under `after_buffer` the exact stored ranges above it.

use crate::MysqlSink;
use crate::error::MysqlSinkError;
use crate::sql::{self, Ident};
use crate::stored;
use std::collections::{BTreeSet, HashMap, HashSet};

use async_trait::async_trait;
use dp_core::{Record, SinkError, Watermarks};
use mysql_async::Value;
use mysql_async::prelude::*;

use crate::fault::classify;
use crate::stored::Stored;

/// The locked stored offsets of a batch's partitions, by topic and partition.
pub(crate) type Marks = HashMap<String, HashMap<i32, Stored>>;

/// Which of `records` to write: neither stored already (in `marks`) nor a second copy of an
/// offset earlier in the batch.
///
/// A batch holds runs of one partition with rising offsets, where no offset can repeat: per
/// partition the highest offset kept is enough, and `marks` is looked up once per run. The
/// first offset that does not rise above its partition's highest (a partition re-read in the
/// batch) switches to a set of every offset kept so far.
fn fresh(records: &[Record], marks: &Marks) -> Vec<bool> {
    let mut keep = Vec::with_capacity(records.len());
    // Per partition seen: topic, partition, its stored offsets, the highest offset kept.
    let mut partitions: Vec<(&str, i32, Option<&Stored>, Option<i64>)> = Vec::new();
    let mut current = 0;
    let mut seen: Option<HashSet<(&str, i32, i64)>> = None;
    for (i, r) in records.iter().enumerate() {
        let same = partitions.get(current).is_some_and(|p| p.1 == r.partition && p.0 == &*r.topic);
        if !same {
            current = match partitions.iter().position(|p| p.1 == r.partition && p.0 == &*r.topic) {
                Some(at) => at,
                None => {
                    let stored = marks.get(&*r.topic).and_then(|ps| ps.get(&r.partition));
                    partitions.push((&*r.topic, r.partition, stored, None));
                    partitions.len() - 1
                }
            };
        }
        let p = &mut partitions[current];
        if p.2.is_some_and(|s| s.contains(r.offset)) {
            keep.push(false);
            continue;
        }
        let new = match &mut seen {
            Some(set) => set.insert((&*r.topic, r.partition, r.offset)),
            None if p.3.is_none_or(|highest| r.offset > highest) => true,
            None => {
                let kept = records[..i].iter().zip(&keep).filter(|&(_, &k)| k);
                let mut set: HashSet<(&str, i32, i64)> =
                    kept.map(|(r, _)| (&*r.topic, r.partition, r.offset)).collect();
                let new = set.insert((&*r.topic, r.partition, r.offset));
                seen = Some(set);
                new
            }
        };
        if new {
            p.3 = Some(p.3.map_or(r.offset, |h| h.max(r.offset)));
        }
        keep.push(new);
    }
    keep
}

/// A row of the offsets table: topic, partition, watermark, ranges above it.
pub(crate) type OffsetsRow = (String, i32, i64, Option<String>);

/// The columns an offsets table must have.
pub(crate) const OFFSETS_COLUMNS: &[&str] =
    &["consumer_group", "topic", "kafka_partition", "next_offset", "stored_ranges"];

pub(crate) fn collect_marks(found: Vec<OffsetsRow>, table: &Ident) -> Result<Marks, SinkError> {
    let mut marks: Marks = HashMap::new();
    for (t, p, next, ranges) in found {
        // Retried, never dead-lettered: the batch is fine, the row is not (fix it by hand).
        let stored = Stored::parse(next, ranges.as_deref()).map_err(|e| {
            SinkError::transient(format!("{table}.stored_ranges of {t}/{p} is not readable: {e}"))
        })?;
        marks.entry(t).or_default().insert(p, stored);
    }
    Ok(marks)
}

/// Adds `stored_ranges` to an offsets table made by a release without it.
pub(crate) async fn add_stored_ranges(
    conn: &mut mysql_async::Conn,
    table: &Ident,
) -> Result<(), MysqlSinkError> {
    let failed = |e: mysql_async::Error| MysqlSinkError::Table {
        table: table.as_str().to_owned(),
        message: e.to_string(),
    };
    let has: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'stored_ranges'",
            (table.as_str(),),
        )
        .await
        .map_err(failed)?;
    if has.unwrap_or(0) == 0 {
        tracing::info!(table = table.as_str(), "adding column stored_ranges to the offsets table");
        conn.query_drop(sql::add_stored_ranges_column(table)).await.map_err(failed)?;
    }
    Ok(())
}

impl MysqlSink {
    /// The watermarks of `partitions` for the configured group (next offset to consume);
    /// partitions without one are absent.
    pub async fn watermarks(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<Vec<(String, i32, i64)>, SinkError> {
        let Some(group) = &self.consumer_group else { return Ok(Vec::new()) };
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.begin().await?;
        let mut params: Vec<Value> = vec![Value::from(&**group)];
        for (t, p) in partitions {
            params.push(Value::from(t.as_str()));
            params.push(Value::from(*p));
        }
        let read = conn.exec(sql::read_offsets(&self.offsets_table, partitions.len()), params);
        match tokio::time::timeout(self.query_timeout, read).await {
            Ok(marks) => marks.map_err(|e| classify("cannot read offset watermarks", e)),
            Err(_) => Err(self.abandon(conn, "reading offset watermarks").await),
        }
    }

    /// Sets the watermarks of the configured group to exactly `targets` (topic, partition, next
    /// offset), lower or higher than they were, and forgets the stored ranges above them, in
    /// one transaction: what `delivery-pipeline offsets reset` does while no instance runs. A
    /// partition rewound this way is stored again from its new offset (the unique key, or an
    /// upsert's guard, decides what a second copy changes).
    pub async fn reset_watermarks(&self, targets: &[(String, i32, i64)]) -> Result<(), SinkError> {
        let Some(group) = &self.consumer_group else {
            return Err(SinkError::permanent(
                "resetting watermarks needs a consumer group (with_consumer_group)",
            ));
        };
        if targets.is_empty() {
            return Ok(());
        }
        let mut params: Vec<Value> = Vec::with_capacity(targets.len() * 4);
        for (t, p, next) in targets {
            params.extend([
                Value::from(&**group),
                Value::from(t.as_str()),
                Value::from(*p),
                Value::from(*next),
            ]);
        }
        let mut conn = self.begin().await?;
        let write =
            conn.exec_drop(sql::reset_offsets(&self.offsets_table, self.syntax, targets.len()), params);
        match tokio::time::timeout(self.query_timeout, write).await {
            Ok(done) => done.map_err(|e| classify("cannot reset offset watermarks", e)),
            Err(_) => Err(self.abandon(conn, "resetting offset watermarks").await),
        }
    }

    /// Which of `records` to write: not already stored (below its partition's watermark, or in
    /// a stored range), and not a second copy of an offset earlier in the same batch (a
    /// partition re-read after an eager rebalance can put both copies in one batch). Also
    /// returns the locked stored offsets, for [`advance_watermarks`](Self::advance_watermarks).
    pub(crate) async fn fresh_records(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        records: &[Record],
    ) -> Result<(Vec<bool>, Marks), SinkError> {
        let marks = self.lock_watermarks(tx, records).await?;
        Ok((fresh(records, &marks), marks))
    }

    /// Locks and reads the stored offsets of the partitions in `records`, for the transaction.
    pub(crate) async fn lock_watermarks(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        records: &[Record],
    ) -> Result<Marks, SinkError> {
        let Some(group) = &self.consumer_group else { return Ok(HashMap::new()) };
        let partitions: BTreeSet<(&str, i32)> = records.iter().map(|r| (&*r.topic, r.partition)).collect();
        let mut params: Vec<Value> = Vec::with_capacity(1 + partitions.len() * 2);
        params.push(Value::from(&**group));
        for (t, p) in &partitions {
            params.push(Value::from(*t));
            params.push(Value::from(*p));
        }
        let lock = sql::lock_offsets(&self.offsets_table, partitions.len());
        let found: Vec<OffsetsRow> =
            tx.exec(&lock, params.clone()).await.map_err(|e| classify("cannot lock offset watermarks", e))?;
        if found.len() < partitions.len() {
            // A partition seen for the first time has no row, and `FOR UPDATE` on a missing row
            // locks nothing under READ COMMITTED (two writers could both pass): seed the missing
            // rows, then lock again. Once seeded, a batch takes this one statement.
            let mut seed: Vec<Value> = Vec::with_capacity(partitions.len() * 3);
            for (t, p) in &partitions {
                seed.extend([Value::from(&**group), Value::from(*t), Value::from(*p)]);
            }
            tx.exec_drop(sql::seed_offsets(&self.offsets_table, partitions.len()), seed)
                .await
                .map_err(|e| classify("cannot seed offset watermarks", e))?;
            let relocked: Vec<OffsetsRow> =
                tx.exec(&lock, params).await.map_err(|e| classify("cannot lock offset watermarks", e))?;
            return collect_marks(relocked, &self.offsets_table);
        }
        collect_marks(found, &self.offsets_table)
    }

    /// Records what `records` cover as stored, in the rows `marks` locked: under
    /// [`WatermarkMode::Prefix`] each partition's watermark rises to one past its highest
    /// offset in `records`; under [`WatermarkMode::Ranges`] exactly what they cover is added.
    /// Never lowers a watermark.
    pub(crate) async fn advance_watermarks<'r>(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        records: impl IntoIterator<Item = &'r Record>,
        mut marks: Marks,
    ) -> Result<(), SinkError> {
        let Some(group) = &self.consumer_group else { return Ok(()) };
        let covered = stored::coverage(records, self.watermark_mode);
        if covered.is_empty() {
            return Ok(());
        }
        let mut params: Vec<Value> = Vec::with_capacity(covered.len() * 5);
        for ((t, p), ranges) in &covered {
            let Some(state) = marks.get_mut(*t).and_then(|ps| ps.get_mut(p)) else {
                return Err(SinkError::transient(format!(
                    "offset watermark row of {t}/{p} was not locked by this transaction"
                )));
            };
            stored::apply(state, ranges, self.watermark_mode);
            params.extend([
                Value::from(&**group),
                Value::from(*t),
                Value::from(*p),
                Value::from(state.next),
                state.ranges_text().map_or(Value::NULL, Value::from),
            ]);
        }
        tx.exec_drop(sql::advance_offsets(&self.offsets_table, self.syntax, covered.len()), params)
            .await
            .map_err(|e| classify("cannot advance offset watermarks", e))
    }
}

#[async_trait]
impl Watermarks for MysqlSink {
    async fn next_offsets(&self, partitions: &[(String, i32)]) -> Result<Vec<(String, i32, i64)>, SinkError> {
        self.watermarks(partitions).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(topic: &str, partition: i32, offset: i64) -> Record {
        Record::new(topic, partition, offset, Some(b"{}".to_vec()))
    }

    #[test]
    fn records_stored_or_repeated_in_the_batch_are_not_fresh() {
        let none = Marks::new();
        let rising = [at("t", 0, 1), at("t", 1, 1), at("t", 0, 2), at("u", 0, 1), at("t", 1, 2)];
        assert_eq!(fresh(&rising, &none), vec![true; 5], "interleaved partitions, each rising");
        // A partition re-read within the batch: every earlier copy is found, in any partition.
        let reread = [
            at("t", 0, 5),
            at("t", 0, 6),
            at("t", 1, 9),
            at("t", 0, 5),
            at("t", 0, 7),
            at("t", 1, 9),
            at("t", 0, 6),
        ];
        assert_eq!(fresh(&reread, &none), vec![true, true, true, false, true, false, false]);
        let falling = [at("t", 0, 5), at("t", 0, 3), at("t", 0, 4), at("t", 0, 3)];
        assert_eq!(fresh(&falling, &none), vec![true, true, true, false], "a lower offset is new once");
        let again = [at("t", 0, 5), at("t", 0, 7), at("t", 0, 7)];
        assert_eq!(fresh(&again, &none), vec![true, true, false], "the highest so far, repeated");
        let mut marks = Marks::new();
        let stored = Stored::parse(3, Some("5-7")).expect("ranges");
        marks.entry("t".to_string()).or_default().insert(0, stored);
        let mixed =
            [at("t", 0, 2), at("t", 0, 3), at("t", 0, 5), at("t", 0, 7), at("t", 1, 0), at("t", 0, 3)];
        assert_eq!(fresh(&mixed, &marks), vec![false, true, false, true, true, false]);
    }
}
