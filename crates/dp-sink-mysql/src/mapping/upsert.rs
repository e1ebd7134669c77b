//! Rows of one batch that share a key: which one an upsert would leave in the table.

use std::collections::HashMap;

use mysql_async::Value;

use super::compile::ColumnMapping;

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

    /// A comparable rank of a row's guard value (`None` without a guard or for NULL); the row
    /// with the larger rank wins.
    pub fn guard_rank(&self, values: &[Value]) -> Option<i128> {
        let v = &values[self.guard?];
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
