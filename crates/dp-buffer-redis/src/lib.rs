//! The Redis write-ahead [`Buffer`](dp_core::Buffer): one key per record, `<prefix>:buffer:<instance-id>:<uuid>`.
//!
//! With the default prefix `msg` this is the design's `msg:buffer:<instance-id>:<uuid>`. The
//! uuid is a version 7 uuid, so an instance's keys sort in arrival order. Each value is the
//! record in the versioned binary encoding of [`dp_core::codec`].
//!
//! Writes are one `MSET` per chunk of records and deletes one `UNLINK` per batch: never one
//! round trip per record.
//!
//! # Leases and adoption
//! Each instance registers its id in the set `<prefix>:instances` and keeps a lease
//! `<prefix>:lease:<instance-id>` alive (`SET … PX lease_ttl`, renewed every third of it).
//! When a process dies for good — a Kubernetes Deployment replaces a pod under a new name — its
//! lease expires; another instance then claims its buffer with an atomic Lua script (the claim
//! `<prefix>:claim:<dead-id>` is set only if the lease is still absent, and only once), delivers
//! the records idempotently, deletes them, and removes the dead id from the set. A restarted
//! StatefulSet pod keeps its id: it renews its lease at once and restores its own keys. Restore scans the instance's keys (`SCAN MATCH`, never `KEYS`),
//! reads them with `MGET` in pages, and returns them in key order. A value that does not decode
//! is not deleted and not lost: it is renamed to `<prefix>:quarantine:<instance-id>:<uuid>` for
//! an operator to inspect, and reported in the log.
//!
//! # Redis Cluster and Sentinel
//! [`RedisMode::Sentinel`] changes only how the primary is found: keys and commands are those of
//! one server. [`RedisMode::Cluster`] runs a multi-key command or a script only when all its keys
//! hash to one slot, so there:
//!
//! - The lease and claim keys carry the id as a hash tag, `<prefix>:lease:{<id>}` and
//!   `<prefix>:claim:{<id>}`, so renewing (lease + claim check) and claiming (lease check +
//!   claim) stay one atomic script each; the registry is added to after the renewal.
//! - With [`RedisBufferConfig::hash_tag`] the buffer keys are `<prefix>:buffer:{<id>}:<uuid>`, in
//!   that same slot: appends, the fenced append script, deletes and reads are single commands as
//!   on one server.
//! - Without it the keys spread over every slot: an append is one `MSET` per slot, a delete one
//!   `UNLINK` and a read one `MGET` per slot, all sent together. Such an append is not atomic, so
//!   its keys are recorded under `<prefix>:pending:{<id>}` until every write is confirmed; a
//!   failed one is deleted before anything else is appended, one cut short by the process's
//!   death is deleted by the next restore or adoption: no partial chunk is ever restored. No
//!   script can fence it either: it is sent only inside the window where no claim can exist
//!   (less than three quarters of a TTL after a renewal that saw none, renewing first if
//!   needed), each page bounded by `command_timeout` ≤ a quarter of the TTL.
//! - Restore and adoption scan every primary, for both key forms, until two scans agree (keys
//!   moving in a resharding are not missed), and order the keys by their uuid.

mod buffer;
mod cluster;
mod config;
mod dictionary;
mod keys;
mod lease;
mod security;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dp_core::BufferError;
use fred::prelude::*;

pub use buffer::Persistence;
pub use config::{Compression, RedisBufferConfig, RedisMode};
pub use dictionary::{DICTIONARY_BYTES, SAMPLE_BYTES, TRAINING_BYTES, TRAINING_RECORDS};
pub use keys::is_key_segment;

#[cfg(feature = "test-support")]
pub mod test_support;

/// Errors of the Redis buffer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisBufferError {
    /// The configuration was refused by the client.
    #[error("invalid redis configuration for {url}: {source}")]
    Config {
        /// The URL, password redacted.
        url: String,
        /// The client's error.
        source: fred::error::Error,
    },
    /// The instance id cannot be used in a key.
    #[error("instance id `{0}` must be 1-128 of [A-Za-z0-9._-]")]
    InstanceId(String),
    /// Connecting failed.
    #[error("redis.url: cannot connect to redis at {url}: {source} ({hint})")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// The client's error.
        source: fred::error::Error,
        /// What to check: a TLS failure explained, or whether Redis runs there.
        hint: String,
    },
    /// A setting that names a file (a password, a certificate) could not be used; the message
    /// names the setting.
    #[error("{0}")]
    Setting(String),
}

/// The Redis write-ahead buffer of one pipeline instance.
#[derive(Clone)]
pub struct RedisBuffer {
    client: Client,
    instance_id: String,
    key_prefix: String,
    buffer_prefix: String,
    quarantine_prefix: String,
    lease_ttl: Duration,
    compression: Compression,
    /// The zstd dictionaries this buffer writes and reads with (`compression =
    /// "zstd-dictionary"`; any buffer reads records others wrote with one).
    dictionaries: Arc<Mutex<dictionary::Dictionaries>>,
    /// Until when no claim on this instance can exist: a renewal confirmed there was none, and a
    /// claim needs the lease to be gone, which takes a full TTL after that renewal. Until then
    /// appends are a plain `MSET`; after, they go through the fenced script.
    unclaimed_until: Arc<Mutex<Option<Instant>>>,
    /// A Redis Cluster: multi-key commands are split per hash slot, scans cover every primary,
    /// and the lease and claim keys carry the instance id as a hash tag.
    clustered: bool,
    /// Keys are written as `<prefix>:buffer:{<instance-id>}:<uuid>`.
    hash_tag: bool,
    /// Keys of a spread cluster append that failed part-way: deleted before anything else is
    /// appended, so no record of a partition sits in Redis after one that is not.
    unsettled: Arc<Mutex<Vec<String>>>,
    /// Names the keys of appends, in arrival order.
    key_names: keys::KeyNames,
}

fn transient(what: &str, e: fred::error::Error) -> BufferError {
    BufferError::transient(format!("redis {what} failed")).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dp_core::SecretUrl;

    use crate::cluster::by_slot;
    use crate::config::{parse_node, url_has_port};
    use crate::keys::uuid_of;

    #[test]
    fn key_segments_refuse_glob_and_separator_characters() {
        assert!(is_key_segment("delivery-pipeline-0"));
        assert!(is_key_segment("pod.abc_1"));
        for bad in ["", "a:b", "a*", "a?", "a[b]", "a b", "é"] {
            assert!(!is_key_segment(bad), "{bad:?} must be refused");
        }
    }

    #[test]
    fn config_validation_names_the_key() {
        RedisBufferConfig::default().validate().expect("defaults validate");
        let c = RedisBufferConfig { url: SecretUrl::new("http://x:pw@host"), ..Default::default() };
        let e = c.validate().expect_err("bad scheme");
        assert!(e.starts_with("redis.url"), "{e}");
        assert!(!e.contains("pw"), "password leaked: {e}");
        let c = RedisBufferConfig { key_prefix: "a:b".into(), ..Default::default() };
        assert!(c.validate().expect_err("bad prefix").starts_with("redis.key_prefix"));
    }

    #[test]
    fn cluster_and_sentinel_topologies_reach_the_client_configuration() {
        let config = |mode, url: &str| RedisBufferConfig {
            url: SecretUrl::new(url),
            mode,
            nodes: vec!["b:7001".into(), "[::1]:7002".into()],
            sentinel_service: (mode == RedisMode::Sentinel).then(|| "primary-1".into()),
            ..Default::default()
        };
        let apply = |c: &RedisBufferConfig| {
            c.validate().expect("valid");
            let mut cfg = Config::from_url(c.url.expose()).expect("url");
            c.apply_topology(&mut cfg);
            cfg
        };
        let cfg = apply(&config(RedisMode::Cluster, "redis://:pw@a:7000"));
        let ServerConfig::Clustered { hosts, .. } = &cfg.server else { panic!("{:?}", cfg.server) };
        let hosts: Vec<String> = hosts.iter().map(|h| format!("{}:{}", h.host, h.port)).collect();
        assert_eq!(hosts, ["a:7000", "b:7001", "::1:7002"]);
        assert_eq!(cfg.password.as_deref(), Some("pw"));

        // A Sentinel's port defaults to 26379; the database is the primary's.
        let cfg = apply(&config(RedisMode::Sentinel, "redis://s/3"));
        let ServerConfig::Sentinel { hosts, service_name } = &cfg.server else { panic!("{:?}", cfg.server) };
        assert_eq!((&*hosts[0].host, hosts[0].port, hosts.len()), ("s", 26379, 3));
        assert_eq!(service_name, "primary-1");
        assert_eq!(cfg.database, Some(3));
        let cfg = apply(&config(RedisMode::Sentinel, "redis://u:pw@s:5000"));
        let ServerConfig::Sentinel { hosts, .. } = &cfg.server else { panic!("{:?}", cfg.server) };
        assert_eq!(hosts[0].port, 5000);

        let cfg = apply(&RedisBufferConfig::default());
        assert!(matches!(cfg.server, ServerConfig::Centralized { .. }), "standalone is unchanged");
    }

    #[test]
    fn node_addresses_and_url_ports() {
        assert_eq!(parse_node(" redis-1.svc:6379 "), Ok(("redis-1.svc".to_owned(), 6379)));
        assert_eq!(parse_node("[fe80::1]:7000"), Ok(("fe80::1".to_owned(), 7000)));
        for bad in ["redis-1", "redis-1:", "redis-1:0", "redis-1:65536", ":6379", "redis://h:1", "u:p@h:1"] {
            assert!(parse_node(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(url_has_port("redis://h:1"));
        assert!(url_has_port("redis://u:p@h:1/0"));
        assert!(url_has_port("redis://[::1]:1"));
        assert!(!url_has_port("redis://h"));
        assert!(!url_has_port("redis://u:p@h/0"));
        assert!(!url_has_port("redis://[::1]"));
    }

    #[test]
    fn keys_group_by_slot_and_both_forms_sort_by_arrival() {
        let keys = ["msg:buffer:{a}:1", "msg:buffer:x:2", "msg:buffer:{a}:3", "msg:buffer:y:4"];
        let mut groups = by_slot(&keys);
        groups.sort();
        assert!(groups.contains(&vec![0, 2]), "one hash tag, one slot: {groups:?}");
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 4);
        let mut mixed = vec!["msg:buffer:{a}:0193b", "msg:buffer:a:0193a", "msg:buffer:a:0193c"];
        mixed.sort_unstable_by(|a, b| uuid_of(a).cmp(uuid_of(b)));
        assert_eq!(mixed, ["msg:buffer:a:0193a", "msg:buffer:{a}:0193b", "msg:buffer:a:0193c"]);
    }
}
