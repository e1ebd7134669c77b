//! The key space: one key per record, `<prefix>:buffer:<instance-id>:<uuid v7>` (or, hash-tagged
//! for a Redis Cluster, `<prefix>:buffer:{<instance-id>}:<uuid>`), and the registry, lease,
//! claim, pending and quarantine keys around them.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::timestamp::context::ContextV7;
use uuid::{Timestamp, Uuid};

use crate::RedisBuffer;

/// Names an instance's new buffer keys: `<buffer prefix><uuid v7>`, each after every key named
/// before it, so the instance's keys sort in arrival order (restore and adoption read them in
/// that order). One per buffer, shared by its clones.
#[derive(Clone)]
pub(crate) struct KeyNames(Arc<Mutex<ContextV7>>);

impl Default for KeyNames {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(ContextV7::new())))
    }
}

impl KeyNames {
    /// `n` new keys under `prefix`. The clock is read once for all of them, and the context
    /// counts up within a millisecond and never goes back across calls (a clock that steps back
    /// included). `Uuid::now_v7` per key read the clock and locked uuid's shared context each
    /// time; with the `format!` that was ~1.5% of the process's samples under a backlog (`perf`).
    pub(crate) fn new_keys(&self, prefix: &str, n: usize) -> Vec<String> {
        let context = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // A clock before 1970 counts as 1970: the context still counts up from its last key.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut text = Uuid::encode_buffer();
        (0..n)
            .map(|_| {
                let id = Uuid::new_v7(Timestamp::from_unix(&*context, now.as_secs(), now.subsec_nanos()));
                let id = id.as_simple().encode_lower(&mut text);
                let mut key = String::with_capacity(prefix.len() + id.len());
                key.push_str(prefix);
                key.push_str(id);
                key
            })
            .collect()
    }
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
    fn new_keys_sort_in_the_order_they_were_named_across_calls() {
        let names = KeyNames::default();
        let shared = names.clone();
        let mut keys = names.new_keys("msg:buffer:pod-1:", 5000);
        // Calls within one millisecond, from clones too: each call's keys after the last one's.
        for i in 0..2000 {
            let more = if i % 2 == 0 { &shared } else { &names }.new_keys("msg:buffer:pod-1:", 3);
            keys.extend(more);
        }
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "strictly increasing, hence unique");
        for key in &keys {
            let id = key.strip_prefix("msg:buffer:pod-1:").expect("the prefix");
            assert_eq!(uuid_of(key), id);
            let parsed = Uuid::parse_str(id).expect("a uuid");
            assert_eq!((id.len(), parsed.get_version_num()), (32, 7), "simple form, version 7");
        }
    }
}
