//! The key space: one key per record, `<prefix>:buffer:<instance-id>:<uuid v7>` (or, hash-tagged
//! for a Redis Cluster, `<prefix>:buffer:{<instance-id>}:<uuid>`), and the registry, lease,
//! claim, pending and quarantine keys around them.

use crate::RedisBuffer;

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
