//! The key space: one key per record, `<prefix>:buffer:<instance-id>:<uuid v7>` (or, hash-tagged
//! for a Redis Cluster, `<prefix>:buffer:{<instance-id>}:<uuid>`), and the registry, lease,
//! claim, pending and quarantine keys around them.

use std::time::{SystemTime, UNIX_EPOCH};

use uuid::timestamp::context::ContextV7;
use uuid::{Timestamp, Uuid};

use crate::RedisBuffer;

/// `n` new buffer keys under `prefix`, each ending in a UUID v7. The clock is read once for
/// all of them, and a context of their own counts them up within that millisecond, so they are
/// unique and in order; `Uuid::now_v7` per key read the clock and locked uuid's shared context
/// each time (with the `format!`, ~1.5% of the process's samples under a backlog, `perf`).
pub(crate) fn new_buffer_keys(prefix: &str, n: usize) -> Vec<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let context = ContextV7::new();
    let mut text = Uuid::encode_buffer();
    (0..n)
        .map(|_| {
            let id = Uuid::new_v7(Timestamp::from_unix(&context, now.as_secs(), now.subsec_nanos()));
            let id = id.as_simple().encode_lower(&mut text);
            let mut key = String::with_capacity(prefix.len() + id.len());
            key.push_str(prefix);
            key.push_str(id);
            key
        })
        .collect()
}

/// Whether `s` can stand in a key between colons and in a `SCAN MATCH` pattern unescaped.
pub fn is_key_segment(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The uuid at the end of a buffer key, either form.
pub(crate) fn uuid_of(key: &str) -> &str {
    key.rsplit(':').next().unwrap_or(key)
}

impl RedisBuffer {
    pub(crate) fn registry_key(&self) -> String {
        format!("{}:instances", self.key_prefix)
    }

    /// `<prefix>:lease:<id>`; in a cluster `<prefix>:lease:{<id>}`, in the hash slot of the id
    /// like the claim, so one script can read and write both.
    pub(crate) fn lease_key(&self, instance: &str) -> String {
        if self.clustered {
            format!("{}:lease:{{{instance}}}", self.key_prefix)
        } else {
            format!("{}:lease:{instance}", self.key_prefix)
        }
    }

    /// `<prefix>:claim:<id>`; in a cluster `<prefix>:claim:{<id>}` (see `lease_key`).
    pub(crate) fn claim_key(&self, instance: &str) -> String {
        if self.clustered {
            format!("{}:claim:{{{instance}}}", self.key_prefix)
        } else {
            format!("{}:claim:{instance}", self.key_prefix)
        }
    }

    /// The prefixes of an instance's keys in both forms, plain and hash-tagged: whichever
    /// `hash_tag` wrote them, they are restored and adopted.
    pub(crate) fn buffer_prefixes_of(&self, instance: &str) -> [String; 2] {
        [
            format!("{}:buffer:{instance}:", self.key_prefix),
            format!("{}:buffer:{{{instance}}}:", self.key_prefix),
        ]
    }

    /// `<prefix>:pending:{<id>}`: the keys of the spread cluster append in flight. One per
    /// instance: the runtime appends one chunk at a time.
    pub(crate) fn pending_key(&self, instance: &str) -> String {
        format!("{}:pending:{{{instance}}}", self.key_prefix)
    }

    /// The `SCAN MATCH` pattern of the keys this instance writes (restore also finds the other
    /// form, see `redis.hash_tag`).
    pub fn key_pattern(&self) -> String {
        format!("{}*", self.buffer_prefix)
    }

    /// Where an undecodable key is moved: `<prefix>:buffer:<rest>` → `<prefix>:quarantine:<rest>`.
    /// `RENAME` needs both in one slot in a cluster: a hash-tagged key keeps its tag; a plain one
    /// becomes `<prefix>:quarantine:{<key>}`, which hashes as the key did.
    pub(crate) fn quarantine_target(&self, key: &str) -> String {
        let marker = format!("{}:buffer:", self.key_prefix);
        match key.strip_prefix(&marker) {
            Some(rest) if !self.clustered || rest.starts_with('{') => {
                format!("{}:quarantine:{rest}", self.key_prefix)
            }
            _ if self.clustered && !key.contains(['{', '}']) => {
                format!("{}:quarantine:{{{key}}}", self.key_prefix)
            }
            _ => format!("{}{key}", self.quarantine_prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_buffer_keys_are_unique_ordered_v7_uuids_under_the_prefix() {
        let keys = new_buffer_keys("msg:buffer:pod-1:", 5000);
        assert_eq!(keys.len(), 5000);
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "strictly increasing, hence unique");
        let later = new_buffer_keys("msg:buffer:pod-1:", 1);
        assert_ne!(keys[0], later[0], "another append's keys are others");
        for key in keys.iter().chain(&later) {
            let id = key.strip_prefix("msg:buffer:pod-1:").expect("the prefix");
            assert_eq!(uuid_of(key), id);
            let parsed = Uuid::parse_str(id).expect("a uuid");
            assert_eq!((id.len(), parsed.get_version_num()), (32, 7), "simple form, version 7");
        }
    }
}
