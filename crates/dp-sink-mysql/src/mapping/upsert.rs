//! Rows of one batch that share a key: which one an upsert would leave in the table, and in
//! what rounds a batch mixing upserts and deletes of one key is applied.

use std::collections::HashMap;

use mysql_async::Value;

use super::compile::ColumnMapping;
use super::delete::{Delete, Op};

/// Statements applied one after the other, each touching a key at most once: a batch's
/// upserts and deletes of one key, applied round by round, end as applying them one by one in
/// offset order would.
#[derive(Debug, Default, PartialEq)]
pub struct Round {
    /// Rows to upsert.
    pub writes: Vec<Vec<Value>>,
    /// Rows to delete.
    pub deletes: Vec<Delete>,
}

impl ColumnMapping {
    /// Which of a batch's rows (in arrival order) to write when several share a key: the one
    /// the upsert would leave in the table. With a guard, the largest guard wins, and of equal
    /// guards the first (a later equal one would not apply); without one, the last.
    pub fn winners(&self, rows: &[&[Value]]) -> Vec<bool> {
        let mut best: HashMap<Vec<u8>, usize> = HashMap::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let mut key = Vec::new();
            for &k in &self.key {
                key_bytes(&row[k], &mut key);
            }
            match best.get_mut(&key) {
                None => {
                    best.insert(key, i);
                }
                Some(held) => {
                    let replace = match (self.guard_rank(rows[*held]), self.guard_rank(row)) {
                        _ if self.guard.is_none() => true,
                        (Some(old), Some(new)) => new > old,
                        (None, _) => true,
                        (Some(_), None) => false,
                    };
                    if replace {
                        *held = i;
                    }
                }
            }
        }
        let mut keep = vec![false; rows.len()];
        for i in best.into_values() {
            keep[i] = true;
        }
        keep
    }

    /// Splits a batch's operations on this table (in offset order) into rounds.
    ///
    /// Without a guard the last operation on a key decides what the table holds, so only it
    /// is kept; with soft deletes, the last upsert and the first delete after it (which sets
    /// the mark; later ones find it set). With a guard, consecutive upserts of a key collapse
    /// to the one the table would keep ([`ColumnMapping::winners`]) and consecutive hard
    /// deletes to the one with the largest guard (the first that applies removes the row;
    /// later ones find none); soft deletes stay one per round, since which of them sets the
    /// mark depends on the stored guard. What remains alternates between upserts and
    /// deletes, one per round, so each still compares with what the one before left.
    pub fn rounds(&self, ops: Vec<Op>) -> Vec<Round> {
        if ops.iter().all(|o| matches!(o, Op::Write(_))) {
            let rows: Vec<Vec<Value>> =
                ops.into_iter().filter_map(|o| if let Op::Write(r) = o { Some(r) } else { None }).collect();
            let values: Vec<&[Value]> = rows.iter().map(Vec::as_slice).collect();
            let keep = self.winners(&values);
            let writes = rows.into_iter().zip(keep).filter_map(|(row, k)| k.then_some(row)).collect();
            return vec![Round { writes, deletes: Vec::new() }];
        }
        let soft = self.soft_delete_column().is_some();
        // Per key: the runs of one kind, each the index of the operation it keeps.
        let mut runs: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            let mut key = Vec::new();
            match op {
                Op::Write(row) => self.key.iter().for_each(|&k| key_bytes(&row[k], &mut key)),
                Op::Delete(d) => d.key.iter().for_each(|v| key_bytes(v, &mut key)),
            }
            let list = runs.entry(key).or_default();
            // Whether the run so far is of deletes; whether `op` continues it.
            let held_deletes = list.last().map(|&held| matches!(ops[held], Op::Delete(_)));
            let after_delete = held_deletes == Some(true);
            let same_kind = held_deletes == Some(matches!(op, Op::Delete(_)));
            match (self.guard.is_some(), soft, op) {
                // The last operation decides.
                (false, false, _) | (false, true, Op::Write(_)) => {
                    list.clear();
                    list.push(i);
                }
                // The first delete after the last upsert sets the mark.
                (false, true, Op::Delete(_)) if after_delete => {}
                (true, true, Op::Delete(_)) => list.push(i),
                _ if !same_kind => list.push(i),
                _ => {
                    if let Some(held) = list.last_mut()
                        && self.replaces(&ops[*held], op)
                    {
                        *held = i;
                    }
                }
            }
        }
        let mut slots: Vec<Option<Op>> = ops.into_iter().map(Some).collect();
        let mut by_round: Vec<Vec<usize>> = Vec::new();
        for list in runs.into_values() {
            for (round, i) in list.into_iter().enumerate() {
                if by_round.len() <= round {
                    by_round.push(Vec::new());
                }
                by_round[round].push(i);
            }
        }
        by_round
            .into_iter()
            .map(|mut indexes| {
                indexes.sort_unstable();
                let mut round = Round::default();
                for i in indexes {
                    match slots[i].take() {
                        Some(Op::Write(row)) => round.writes.push(row),
                        Some(Op::Delete(d)) => round.deletes.push(d),
                        None => {}
                    }
                }
                round
            })
            .collect()
    }

    /// Whether `new` takes the place of `held`, of the same kind and key, under a guard: an
    /// upsert with a greater guard (a first NULL one loses to any); a delete with a greater
    /// guard (it spares fewer stored rows).
    fn replaces(&self, held: &Op, new: &Op) -> bool {
        let (old, new) = match (held, new) {
            (Op::Write(a), Op::Write(b)) => (self.guard_rank(a), self.guard_rank(b)),
            (Op::Delete(a), Op::Delete(b)) => {
                (a.guard.as_ref().and_then(rank), b.guard.as_ref().and_then(rank))
            }
            _ => return false,
        };
        match (old, new) {
            (Some(old), Some(new)) => new > old,
            (None, _) => true,
            (Some(_), None) => false,
        }
    }

    /// A comparable rank of a row's guard value (`None` without a guard or for NULL); the row
    /// with the larger rank wins.
    pub fn guard_rank(&self, values: &[Value]) -> Option<i128> {
        rank(&values[self.guard?])
    }
}

/// A comparable rank of a guard value (`None` for NULL).
fn rank(v: &Value) -> Option<i128> {
    match v {
        Value::Int(i) => Some(i128::from(*i)),
        Value::UInt(u) => Some(i128::from(*u)),
        Value::Date(y, mo, d, h, mi, s, us) => {
            let days = (i128::from(*y) * 13 + i128::from(*mo)) * 32 + i128::from(*d);
            let secs = ((days * 24 + i128::from(*h)) * 60 + i128::from(*mi)) * 60 + i128::from(*s);
            Some(secs * 1_000_000 + i128::from(*us))
        }
        _ => None,
    }
}

/// Appends an unambiguous encoding of a key value (tagged, length-prefixed).
fn key_bytes(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::NULL => out.push(0),
        Value::Bytes(b) => {
            out.push(1);
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
        }
        Value::Int(i) => {
            out.push(2);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::UInt(u) => {
            out.push(3);
            out.extend_from_slice(&u.to_le_bytes());
        }
        Value::Float(f) => {
            out.push(4);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Double(f) => {
            out.push(5);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Date(y, mo, d, h, mi, s, us) => {
            out.push(6);
            out.extend_from_slice(&y.to_le_bytes());
            out.extend_from_slice(&[*mo, *d, *h, *mi, *s]);
            out.extend_from_slice(&us.to_le_bytes());
        }
        Value::Time(neg, d, h, mi, s, us) => {
            out.push(7);
            out.extend_from_slice(&[u8::from(*neg), *h, *mi, *s]);
            out.extend_from_slice(&d.to_le_bytes());
            out.extend_from_slice(&us.to_le_bytes());
        }
    }
}
