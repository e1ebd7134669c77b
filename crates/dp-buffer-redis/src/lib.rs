//! The Redis write-ahead [`Buffer`]: one key per record, `<prefix>:buffer:<instance-id>:<uuid>`.
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

mod security;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dp_core::{
    Buffer, BufferError, BufferKey, Leases, Orphan, ReadBack, Record, SecretUrl, TlsConfig, decode_record,
    encode_record, encode_record_zstd,
};
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::security::connect_error;

#[cfg(feature = "test-support")]
pub mod test_support;

/// Settings of the Redis buffer (`[redis]` in the config file, `DP_REDIS__*` in the environment).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisBufferConfig {
    /// `redis://[user:password@]host:port[/db]`: the server (`standalone`), a seed node
    /// (`cluster`) or a Sentinel (`sentinel`, port 26379 when left out); its user, password and
    /// database are always those of the data nodes.
    pub url: SecretUrl,
    /// A file holding the password (a mounted Kubernetes secret), read at startup; one
    /// trailing newline is dropped. The URL then carries none (a user name may stay in it).
    pub password_file: Option<PathBuf>,
    /// TLS to the server (`[redis.tls]`), on when enabled or with a `rediss://` URL; the
    /// server's certificate is then verified against `ca_file` (or the built-in Mozilla roots)
    /// and must name the host.
    pub tls: TlsConfig,
    /// Which deployment `url` points at: one server, a Redis Cluster or a Sentinel-watched
    /// primary.
    pub mode: RedisMode,
    /// More seed nodes (`cluster`) or Sentinels (`sentinel`) besides `url`'s, `host:port` each;
    /// in the environment a comma-separated list. Empty with `standalone`.
    #[serde(deserialize_with = "dp_core::string_or_list")]
    pub nodes: Vec<String>,
    /// With `sentinel`: the name the Sentinels monitor the primary under
    /// (`sentinel monitor <name> …`).
    pub sentinel_service: Option<String>,
    /// First segment of every key: keys are `<key_prefix>:buffer:<instance-id>:<uuid>`.
    pub key_prefix: String,
    /// Write keys as `<key_prefix>:buffer:{<instance-id>}:<uuid>`: the hash tag puts all of an
    /// instance's keys in one Redis Cluster hash slot, so each append, delete and read is one
    /// command as on a single server, at the price of one slot (one node) carrying the whole
    /// instance. Off: keys spread over every node, each batch fans out per slot. Either form is
    /// restored and adopted, so this can change across restarts.
    pub hash_tag: bool,
    /// How long one Redis command (append, fetch, remove, lease renewal, scan page) may take
    /// before it counts as failed. A connection that leaves a command unanswered this long is
    /// closed and made again (a silent network path reports nothing otherwise).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How long to wait for a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long an instance's lease outlives its last renewal; after that its buffer is
    /// adopted by another instance.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Compression of each buffered record: `none` or `zstd` (about 25% less Redis memory for
    /// ~500-byte JSON events, for a little CPU). Records written either way are read back
    /// whatever this is set to, so it can be changed across restarts.
    pub compression: Compression,
}

/// Which Redis deployment the buffer talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server at `url`.
    #[default]
    Standalone,
    /// A Redis Cluster; `url` and `nodes` are seed nodes, the rest is discovered.
    Cluster,
    /// A primary found through Sentinels at `url` and `nodes`, under `sentinel_service`;
    /// followed across failovers.
    Sentinel,
}

impl RedisMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Cluster => "cluster",
            Self::Sentinel => "sentinel",
        }
    }
}

/// How buffered records are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as encoded.
    #[default]
    None,
    /// zstd at level 1.
    Zstd,
}

impl Default for RedisBufferConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl::new("redis://127.0.0.1:6379"),
            password_file: None,
            tls: TlsConfig::default(),
            mode: RedisMode::Standalone,
            nodes: Vec::new(),
            sentinel_service: None,
            key_prefix: "msg".into(),
            hash_tag: false,
            command_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(30),
            compression: Compression::None,
        }
    }
}

impl RedisBufferConfig {
    /// Checks the settings without connecting. Errors name the offending key.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_topology()?;
        if !(self.url.expose().starts_with("redis://") || self.url.expose().starts_with("rediss://")) {
            return Err(format!(
                "redis.url: `{}` must start with redis:// (or rediss:// for TLS)",
                self.url.redacted()
            ));
        }
        Config::from_url(self.url.expose())
            .map_err(|e| format!("redis.url: `{}` is not a valid redis URL: {e}", self.url.redacted()))?;
        self.validate_security()?;
        if !is_key_segment(&self.key_prefix) {
            return Err(format!("redis.key_prefix: `{}` must be 1-64 of [A-Za-z0-9._-]", self.key_prefix));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err("redis.lease_ttl: must be at least 1s".into());
        }
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err("redis.command_timeout / redis.connect_timeout: must be greater than zero".into());
        }
        Ok(())
    }
}

impl RedisBufferConfig {
    /// `redis.mode` and what goes with it: `nodes`, `sentinel_service`, the URL's scheme and
    /// database, and the lease margin spread cluster appends rely on.
    fn validate_topology(&self) -> Result<(), String> {
        let url = self.url.expose();
        if let Some((scheme, _)) = url.split_once("://") {
            let mode = if scheme.ends_with("-cluster") {
                Some("cluster")
            } else if scheme.ends_with("-sentinel") {
                Some("sentinel")
            } else {
                None
            };
            if let Some(mode) = mode {
                return Err(format!(
                    "redis.url: `{scheme}://` URLs are not used here; write redis://host:port (rediss:// for TLS) \
                     and set redis.mode = \"{mode}\", with the other addresses in redis.nodes"
                ));
            }
        }
        let mode = self.mode.as_str();
        if self.mode == RedisMode::Standalone && !self.nodes.is_empty() {
            return Err(format!(
                "redis.nodes: only used with redis.mode = \"cluster\" (seed nodes) or \"sentinel\" (Sentinels); redis.mode is \"{mode}\""
            ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            parse_node(node).map_err(|e| format!("redis.nodes[{i}]: `{node}` {e}"))?;
        }
        match (&self.sentinel_service, self.mode) {
            (Some(_), RedisMode::Standalone | RedisMode::Cluster) => {
                return Err(format!(
                    "redis.sentinel_service: only used with redis.mode = \"sentinel\"; redis.mode is \"{mode}\""
                ));
            }
            (None, RedisMode::Sentinel) => {
                return Err("redis.sentinel_service: required with redis.mode = \"sentinel\": the name the Sentinels monitor the primary under".into());
            }
            (Some(name), RedisMode::Sentinel) if name.is_empty() || name.contains(char::is_whitespace) => {
                return Err(format!(
                    "redis.sentinel_service: `{name}` must be a non-empty name without spaces"
                ));
            }
            _ => {}
        }
        if self.mode == RedisMode::Cluster {
            if let Ok(c) = Config::from_url_centralized(url)
                && let Some(db) = c.database.filter(|&db| db != 0)
            {
                return Err(format!(
                    "redis.url: a Redis Cluster has only database 0; remove `/{db}` from the URL"
                ));
            }
            if !self.hash_tag && self.command_timeout * 4 > self.lease_ttl {
                return Err(format!(
                    "redis.command_timeout: with redis.mode = \"cluster\" and redis.hash_tag = false it must be at most \
                     a quarter of redis.lease_ttl ({:?}): appends spread over the cluster are fenced by the lease's timing",
                    self.lease_ttl
                ));
            }
        }
        Ok(())
    }

    /// Points a client configuration parsed from `url` at the deployment `mode` names:
    /// `url`'s server first, then `nodes`.
    fn apply_topology(&self, cfg: &mut Config) {
        let ServerConfig::Centralized { server } = &cfg.server else { return };
        let mut hosts = vec![server.clone()];
        hosts.extend(self.nodes.iter().filter_map(|n| parse_node(n).ok()).map(|(h, p)| Server::new(h, p)));
        match self.mode {
            RedisMode::Standalone => {}
            RedisMode::Cluster => {
                cfg.database = None;
                // Seeds first, then every node of the last routing table: a restarted seed
                // does not stop rediscovery.
                cfg.server = ServerConfig::Clustered {
                    hosts,
                    policy: fred::types::config::ClusterDiscoveryPolicy::UseCache,
                };
            }
            RedisMode::Sentinel => {
                if !url_has_port(self.url.expose()) {
                    hosts[0].port = 26379;
                }
                cfg.server = ServerConfig::Sentinel {
                    hosts,
                    service_name: self.sentinel_service.clone().unwrap_or_default(),
                };
            }
        }
    }
}

/// `host:port` (an IPv6 address in brackets).
fn parse_node(node: &str) -> Result<(String, u16), &'static str> {
    let (host, port) = node.trim().rsplit_once(':').ok_or("must be host:port")?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err("must be host:port (the scheme and credentials come from redis.url)");
    }
    let port = port.parse::<u16>().ok().filter(|&p| p > 0).ok_or("must end in a port number 1-65535")?;
    Ok((host.to_owned(), port))
}

/// Whether the URL names a port (`redis://host` does not).
fn url_has_port(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host_port.rsplit_once(']') {
        Some((_, after)) => after.starts_with(':'),
        None => host_port.contains(':'),
    }
}

impl RedisBufferConfig {
    /// Whether connections use TLS: `redis.tls.enabled`, or a `rediss://` URL.
    pub fn tls_on(&self) -> bool {
        let url = self.url.expose();
        self.tls.enabled || url.starts_with("rediss") || url.starts_with("valkeys")
    }

    fn validate_security(&self) -> Result<(), String> {
        if let Some(file) = &self.password_file {
            if file.as_os_str().is_empty() {
                return Err("redis.password_file: must not be empty; remove it, or give a file".into());
            }
            if Config::from_url(self.url.expose()).is_ok_and(|c| c.password.is_some()) {
                return Err(format!(
                    "redis.password_file: `{}` has a password already; give it in one place only",
                    self.url.redacted()
                ));
            }
        }
        self.tls.validate("redis.tls", self.tls_on())
    }

    /// Puts the password of `password_file` and the TLS of `tls` into a client configuration
    /// made from `url`. Reads those files; errors name the setting.
    pub fn apply_security(&self, cfg: &mut Config) -> Result<(), RedisBufferError> {
        if let Some(file) = &self.password_file {
            let password =
                dp_core::read_secret_file("redis.password_file", file).map_err(RedisBufferError::Setting)?;
            cfg.password = Some(password.expose().to_owned());
        }
        // Replaces the default a `rediss://` URL brings (system roots, no client certificate).
        cfg.tls = if self.tls_on() { Some(security::connector(&self.tls)?.into()) } else { None };
        Ok(())
    }
}

/// Whether `s` can stand in a key between colons and in a `SCAN MATCH` pattern unescaped.
pub fn is_key_segment(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether Redis keeps acknowledged writes across a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    /// `yes` when the append-only file is on.
    pub appendonly: String,
    /// `always`, `everysec` or `no`.
    pub appendfsync: String,
}

impl Persistence {
    /// AOF on, and fsynced at least every second.
    pub fn is_durable(&self) -> bool {
        self.appendonly == "yes" && matches!(self.appendfsync.as_str(), "always" | "everysec")
    }

    /// 0 not durable, 1 `everysec`, 2 `always`: the weakest node of a cluster is reported.
    fn strength(&self) -> u8 {
        match (self.is_durable(), self.appendfsync.as_str()) {
            (false, _) => 0,
            (true, "always") => 2,
            (true, _) => 1,
        }
    }
}

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
}

/// Writes records only while nobody has claimed this instance's buffer: an instance whose lease
/// expired while it was alive (Redis unreachable for longer than the TTL) must not add keys
/// under an adopter's `SCAN`, which could miss them and let the watermark jump a gap.
/// `KEYS[1]` is the claim, `KEYS[2..]` the records' keys (declared, so a Redis Cluster can check
/// they share the claim's slot) and `ARGV` their values.
const APPEND_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[i - 1]) end
return 1
"#;

/// Registers the instance, renews its lease and reports whether someone holds a claim on it,
/// in one atomic step.
const RENEW_SCRIPT: &str = r#"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return redis.call('EXISTS', KEYS[3])
"#;

/// Renews the lease and reports whether someone holds a claim, in one atomic step: the cluster
/// form of `RENEW_SCRIPT`, whose keys share the instance id's hash slot (the registry, shared by
/// every instance, is added to after it).
const RENEW_LEASE_SCRIPT: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('EXISTS', KEYS[2])
"#;

/// Records per `APPEND_SCRIPT` call, so one script does not block Redis for long.
const APPEND_CHUNK: usize = 1000;

/// Sets the claim on an orphan only while its lease is absent, and only once.
const CLAIM_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"#;

const PAGE: usize = 1000;

impl RedisBuffer {
    /// Connects to Redis. Commands that cannot be sent are retried by the client's reconnect
    /// policy until `command_timeout`; the connection itself is re-established forever.
    pub async fn connect(config: &RedisBufferConfig, instance_id: &str) -> Result<Self, RedisBufferError> {
        if !is_key_segment(instance_id) {
            return Err(RedisBufferError::InstanceId(instance_id.to_owned()));
        }
        let url = config.url.redacted();
        let mut cfg = Config::from_url(config.url.expose())
            .map_err(|source| RedisBufferError::Config { url: url.clone(), source })?;
        config.apply_topology(&mut cfg);
        config.apply_security(&mut cfg)?;
        let client = Builder::from_config(cfg)
            .with_connection_config(|c| {
                c.connection_timeout = config.connect_timeout;
                c.internal_command_timeout = config.command_timeout;
                // A connection that stops answering (a silent path: no data, no FIN, no RST) is
                // closed and made again, instead of failing every command for ever; commands
                // that already timed out were answered with an error and are never sent again.
                c.unresponsive.max_timeout = Some(config.command_timeout);
                c.unresponsive.interval = (config.command_timeout / 4).max(Duration::from_millis(100));
            })
            .with_performance_config(|p| {
                p.default_command_timeout = config.command_timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()
            .map_err(|source| RedisBufferError::Config { url: url.clone(), source })?;
        let connect = async {
            client.init().await?;
            client.ping::<()>(None).await
        };
        match tokio::time::timeout(config.connect_timeout, connect).await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(connect_error(url, source)),
            Err(_) => {
                let _ = client.quit().await;
                return Err(connect_error(
                    url,
                    fred::error::Error::new(fred::error::ErrorKind::Timeout, "connection timed out"),
                ));
            }
        }
        let buffer = Self {
            client,
            instance_id: instance_id.to_owned(),
            key_prefix: config.key_prefix.clone(),
            buffer_prefix: if config.hash_tag {
                format!("{}:buffer:{{{instance_id}}}:", config.key_prefix)
            } else {
                format!("{}:buffer:{instance_id}:", config.key_prefix)
            },
            quarantine_prefix: format!("{}:quarantine:{instance_id}:", config.key_prefix),
            lease_ttl: config.lease_ttl,
            compression: config.compression,
            unclaimed_until: Arc::default(),
            clustered: config.mode == RedisMode::Cluster,
            hash_tag: config.hash_tag,
            unsettled: Arc::default(),
        };
        // Claim our own buffer before anything else, so nobody adopts it while we restore.
        buffer.renew_lease().await.map_err(|source| connect_error(config.url.redacted(), source))?;
        Ok(buffer)
    }

    fn registry_key(&self) -> String {
        format!("{}:instances", self.key_prefix)
    }

    /// `<prefix>:lease:<id>`; in a cluster `<prefix>:lease:{<id>}`, in the hash slot of the id
    /// like the claim, so one script can read and write both.
    fn lease_key(&self, instance: &str) -> String {
        if self.clustered {
            format!("{}:lease:{{{instance}}}", self.key_prefix)
        } else {
            format!("{}:lease:{instance}", self.key_prefix)
        }
    }

    /// `<prefix>:claim:<id>`; in a cluster `<prefix>:claim:{<id>}` (see `lease_key`).
    fn claim_key(&self, instance: &str) -> String {
        if self.clustered {
            format!("{}:claim:{{{instance}}}", self.key_prefix)
        } else {
            format!("{}:claim:{instance}", self.key_prefix)
        }
    }

    /// The prefixes of an instance's keys in both forms, plain and hash-tagged: whichever
    /// `hash_tag` wrote them, they are restored and adopted.
    fn buffer_prefixes_of(&self, instance: &str) -> [String; 2] {
        [
            format!("{}:buffer:{instance}:", self.key_prefix),
            format!("{}:buffer:{{{instance}}}:", self.key_prefix),
        ]
    }

    /// Appends spread over a cluster's slots: no one command, and no script, covers a chunk.
    fn spread(&self) -> bool {
        self.clustered && !self.hash_tag
    }

    async fn renew_lease(&self) -> Result<(), fred::error::Error> {
        let sent = Instant::now();
        let lease = self.lease_key(&self.instance_id);
        let claim = self.claim_key(&self.instance_id);
        let ttl = (self.lease_ttl.as_millis() as i64).to_string();
        let claimed: i64 = if self.clustered {
            let claimed: i64 = self
                .client
                .eval(RENEW_LEASE_SCRIPT, vec![lease, claim], vec![now_millis().to_string(), ttl])
                .await?;
            // Registered once the lease exists: a registered id without a lease has expired.
            self.client.sadd::<(), _, _>(self.registry_key(), self.instance_id.as_str()).await?;
            claimed
        } else {
            self.client
                .eval(
                    RENEW_SCRIPT,
                    vec![self.registry_key(), lease, claim],
                    vec![self.instance_id.clone(), now_millis().to_string(), ttl],
                )
                .await?
        };
        // Three quarters of the TTL, measured from before the request: margin for clock drift.
        let until = (claimed == 0).then(|| sent + self.lease_ttl * 3 / 4);
        if let Ok(mut u) = self.unclaimed_until.lock() {
            *u = until;
        }
        Ok(())
    }

    /// The underlying client, for callers that need other commands (tests, health checks).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The `SCAN MATCH` pattern of the keys this instance writes (restore also finds the other
    /// form, see `redis.hash_tag`).
    pub fn key_pattern(&self) -> String {
        format!("{}*", self.buffer_prefix)
    }

    fn surely_unclaimed(&self) -> bool {
        self.unclaimed_until.lock().ok().and_then(|u| *u).is_some_and(|u| Instant::now() < u)
    }

    /// The primaries of the cluster, from the client's routing table.
    fn primaries(&self) -> Result<Vec<Server>, fred::error::Error> {
        self.client
            .cached_cluster_state()
            .map(|state| state.unique_primary_nodes())
            .filter(|nodes| !nodes.is_empty())
            .ok_or_else(|| {
                fred::error::Error::new(fred::error::ErrorKind::Cluster, "no cluster routing table yet")
            })
    }

    /// Redis's persistence settings (`CONFIG GET appendonly` and `appendfsync`); in a cluster,
    /// the weakest of its primaries'.
    pub async fn persistence(&self) -> Result<Persistence, fred::error::Error> {
        if !self.clustered {
            return read_persistence(&self.client).await;
        }
        let mut weakest: Option<Persistence> = None;
        for server in self.primaries()? {
            let p = read_persistence(&self.client.with_cluster_node(server)).await?;
            weakest = match weakest {
                Some(w) if w.strength() <= p.strength() => Some(w),
                _ => Some(p),
            };
        }
        weakest
            .ok_or_else(|| fred::error::Error::new(fred::error::ErrorKind::Cluster, "no cluster primaries"))
    }

    /// Whether the servers this instance's appends need answer: the server; with spread
    /// cluster keys every primary, so a node that is down keeps the buffer unhealthy rather than
    /// failing every append (each touches every node); with hash-tagged cluster keys nothing
    /// here, as the claim check that follows goes to the one node holding them.
    async fn ping_all(&self) -> Result<(), fred::error::Error> {
        if !self.clustered {
            return self.client.ping::<()>(None).await;
        }
        if self.hash_tag {
            return Ok(());
        }
        for server in self.primaries()? {
            self.client.with_cluster_node(server).ping::<()>(None).await?;
        }
        Ok(())
    }

    /// How many write-ahead keys this instance has in Redis now.
    pub async fn count_keys(&self) -> Result<usize, fred::error::Error> {
        Ok(self.scan_keys().await?.len())
    }

    async fn scan_keys(&self) -> Result<Vec<String>, fred::error::Error> {
        self.scan_keys_of(&self.instance_id).await
    }

    /// Every key of `instance`'s buffer, both forms, in arrival (uuid v7) order; in a cluster
    /// scanned on every primary.
    async fn scan_keys_of(&self, instance: &str) -> Result<Vec<String>, fred::error::Error> {
        use futures::TryStreamExt as _;
        let mut keys: Vec<String> = Vec::new();
        for prefix in self.buffer_prefixes_of(instance) {
            let pattern = format!("{prefix}*");
            let found: Vec<String> = if self.clustered {
                self.client
                    .scan_cluster_buffered(pattern, Some(PAGE as u32), None)
                    .map_ok(|k| k.into_string().unwrap_or_default())
                    .try_collect()
                    .await?
            } else {
                self.client
                    .scan_buffered(pattern, Some(PAGE as u32), None)
                    .map_ok(|k| k.into_string().unwrap_or_default())
                    .try_collect()
                    .await?
            };
            keys.extend(found);
        }
        keys.retain(|k| !k.is_empty());
        // Both forms end in the uuid, which orders them by arrival.
        keys.sort_unstable_by(|a, b| uuid_of(a).cmp(uuid_of(b)).then_with(|| a.cmp(b)));
        keys.dedup();
        Ok(keys)
    }

    /// `scan_keys_of`, repeated in a cluster until two scans agree: a scan that runs while a slot
    /// migrates between nodes can miss the keys moving, and a missed key would be a record a
    /// restore or an adoption skips while the watermark rises over it. (Nothing else adds or
    /// removes the keys meanwhile: a restore runs before consuming, an orphan is fenced.)
    async fn scan_keys_settled(&self, instance: &str) -> Result<Vec<String>, fred::error::Error> {
        let mut keys = self.scan_keys_of(instance).await?;
        if !self.clustered {
            return Ok(keys);
        }
        for _ in 0..10 {
            let again = self.scan_keys_of(instance).await?;
            if again == keys {
                return Ok(keys);
            }
            keys = again;
        }
        tracing::warn!(
            instance,
            keys = keys.len(),
            "the cluster's keys kept moving during ten scans (a resharding?); going on with the last scan"
        );
        Ok(keys)
    }

    /// Values of `keys` in order (`Value::Null` where a key is missing): one `MGET` per page of
    /// keys; in a cluster one per hash slot of the page, sent together.
    async fn mget_all(&self, keys: &[&str]) -> Result<Vec<Value>, fred::error::Error> {
        let mut out = Vec::with_capacity(keys.len());
        for page in keys.chunks(PAGE) {
            if !self.clustered {
                let values: Vec<Value> = self.client.mget(page.to_vec()).await?;
                out.extend(values);
                continue;
            }
            let groups = by_slot(page);
            let replies = futures::future::join_all(
                groups
                    .iter()
                    .map(|g| self.client.mget::<Value, _>(g.iter().map(|&i| page[i]).collect::<Vec<_>>())),
            )
            .await;
            let mut values = vec![Value::Null; page.len()];
            for (g, reply) in groups.iter().zip(replies) {
                let reply = match reply? {
                    Value::Array(v) => v,
                    one => vec![one],
                };
                if reply.len() != g.len() {
                    return Err(fred::error::Error::new(
                        fred::error::ErrorKind::Protocol,
                        format!("MGET of {} keys answered {} values", g.len(), reply.len()),
                    ));
                }
                for (&i, v) in g.iter().zip(reply) {
                    values[i] = v;
                }
            }
            out.extend(values);
        }
        Ok(out)
    }

    /// `UNLINK` of `keys`: one per page of keys; in a cluster one per hash slot, sent together.
    async fn unlink_all(&self, keys: &[&str]) -> Result<(), fred::error::Error> {
        for page in keys.chunks(PAGE) {
            if !self.clustered {
                self.client.unlink::<i64, _>(page.to_vec()).await?;
                continue;
            }
            let groups = by_slot(page);
            let replies = futures::future::join_all(
                groups
                    .iter()
                    .map(|g| self.client.unlink::<i64, _>(g.iter().map(|&i| page[i]).collect::<Vec<_>>())),
            )
            .await;
            replies.into_iter().try_for_each(|r| r.map(drop))?;
        }
        Ok(())
    }

    /// `<prefix>:pending:{<id>}`: the keys of the spread cluster append in flight. One per
    /// instance: the runtime appends one chunk at a time.
    fn pending_key(&self, instance: &str) -> String {
        format!("{}:pending:{{{instance}}}", self.key_prefix)
    }

    /// A cluster append without hash tag. The keys spread over the slots, so the chunk cannot
    /// be one `MSET` nor one fenced script: it is one `MSET` per slot (nearly one per key),
    /// sent together (the client pipelines them on each node's connection).
    ///
    /// Fenced by the lease's timing: a page is sent only while a renewal that saw no claim is
    /// less than three quarters of a TTL old (renewed first if needed), and takes at most
    /// `command_timeout` (at most a quarter of the TTL, checked at startup), so every write
    /// lands before the lease can expire, hence before a claim can exist.
    ///
    /// Not atomic, so made to look atomic: the chunk's keys are recorded under
    /// `<prefix>:pending:{<id>}` before the writes and that record is deleted once every write
    /// is confirmed, before `Ok`. A failure part-way deletes the chunk's keys (before anything
    /// else is appended; the health check fails until they are gone); a process that dies
    /// part-way leaves the record, and the next restore or adoption deletes those keys first.
    /// Either way no partial chunk is ever restored, so a partition never has a key in Redis
    /// after a record held in memory only, and the records of a failed append were never
    /// acknowledged as buffered (Kafka has them).
    async fn append_spread(&self, keys: &[String], records: &[Record]) -> Result<(), BufferError> {
        self.settle().await.map_err(|e| transient("UNLINK of a failed append's keys", e))?;
        let pending = self.pending_key(&self.instance_id);
        self.client
            .set::<(), _, _>(&pending, keys.join("\n"), None, None, false)
            .await
            .map_err(|e| transient("SET of the pending append", e))?;
        let mut result = Ok(());
        for (ks, rs) in keys.chunks(PAGE).zip(records.chunks(PAGE)) {
            result = self.write_spread(ks, rs).await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = self
                .client
                .del::<(), _>(&pending)
                .await
                .map_err(|e| transient("DEL of the pending append", e));
        }
        if result.is_err() {
            if let Ok(mut u) = self.unsettled.lock() {
                u.extend_from_slice(keys);
            }
            if let Err(cleanup) = self.settle().await {
                tracing::warn!(error = %cleanup, keys = keys.len(), "cannot delete the keys of a failed append yet; retried before the next append");
            }
        }
        result
    }

    /// One page of a spread append: the fence's window, then one `MSET` per slot.
    async fn write_spread(&self, keys: &[String], records: &[Record]) -> Result<(), BufferError> {
        if !self.surely_unclaimed() {
            self.renew_lease().await.map_err(|e| transient("lease renewal", e))?;
            if !self.surely_unclaimed() {
                return Err(being_adopted());
            }
        }
        // Separate commands rather than a client pipeline: a command that timed out is dropped
        // by the client, never sent after a reconnect (a pipeline's would be).
        let groups = by_slot(keys);
        let replies = futures::future::join_all(groups.iter().map(|g| {
            let pairs: Vec<(&str, Vec<u8>)> =
                g.iter().map(|&i| (keys[i].as_str(), self.encode(&records[i]))).collect();
            self.client.mset(pairs)
        }))
        .await;
        replies.into_iter().try_for_each(|r| r).map_err(|e| transient("MSET", e))
    }

    /// Deletes the keys failed spread appends may have left, then their pending record; fails
    /// while any is left.
    async fn settle(&self) -> Result<(), fred::error::Error> {
        let keys = match self.unsettled.lock() {
            Ok(mut u) => std::mem::take(&mut *u),
            Err(_) => return Ok(()),
        };
        if keys.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let result = async {
            self.unlink_all(&names).await?;
            self.client.del::<(), _>(self.pending_key(&self.instance_id)).await
        }
        .await;
        if result.is_err()
            && let Ok(mut u) = self.unsettled.lock()
        {
            u.splice(0..0, keys);
        }
        result
    }

    /// Deletes the keys of a spread append `instance` had in flight when it stopped (see
    /// `append_spread`), so a restore or an adoption never takes part of a chunk.
    async fn clear_pending(&self, instance: &str) -> Result<(), fred::error::Error> {
        let pending = self.pending_key(instance);
        let Some(list) = self.client.get::<Option<String>, _>(&pending).await? else {
            return Ok(());
        };
        let keys: Vec<&str> = list.split('\n').filter(|k| !k.is_empty()).collect();
        self.unlink_all(&keys).await?;
        self.client.del::<(), _>(&pending).await?;
        tracing::info!(
            instance,
            keys = keys.len(),
            "deleted the keys of an append cut short (never acknowledged as buffered; Kafka still has its records)"
        );
        Ok(())
    }
}

/// Indices of `keys` grouped by cluster hash slot, each group in the keys' order.
fn by_slot(keys: &[impl AsRef<str>]) -> Vec<Vec<usize>> {
    let mut groups: std::collections::BTreeMap<u16, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        groups.entry(fred::util::redis_keyslot(k.as_ref().as_bytes())).or_default().push(i);
    }
    groups.into_values().collect()
}

/// The uuid at the end of a buffer key, either form.
fn uuid_of(key: &str) -> &str {
    key.rsplit(':').next().unwrap_or(key)
}

async fn read_persistence<C: ConfigInterface>(client: &C) -> Result<Persistence, fred::error::Error> {
    let get = |name: &'static str| async move {
        let pairs: Vec<String> = client.config_get(name).await?;
        Ok::<String, fred::error::Error>(pairs.get(1).cloned().unwrap_or_default())
    };
    Ok(Persistence { appendonly: get("appendonly").await?, appendfsync: get("appendfsync").await? })
}

fn being_adopted() -> BufferError {
    BufferError::transient(
        "this instance's buffer is being adopted by another instance (its lease had expired); holding records in memory",
    )
}

fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn transient(what: &str, e: fred::error::Error) -> BufferError {
    BufferError::transient(format!("redis {what} failed")).with_source(e)
}

#[async_trait]
impl Buffer for RedisBuffer {
    async fn append(&self, records: &[Record]) -> Result<Vec<BufferKey>, BufferError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> =
            records.iter().map(|_| format!("{}{}", self.buffer_prefix, Uuid::now_v7().as_simple())).collect();
        if self.spread() {
            self.append_spread(&keys, records).await?;
            return Ok(keys.into_iter().map(BufferKey).collect());
        }
        if self.surely_unclaimed() {
            let pairs: Vec<(&str, Vec<u8>)> =
                keys.iter().map(String::as_str).zip(records.iter().map(|r| self.encode(r))).collect();
            self.client.mset(pairs).await.map_err(|e| transient("MSET", e))?;
            return Ok(keys.into_iter().map(BufferKey).collect());
        }
        // The claim and the keys share a slot (one server, or the instance id's hash tag in a
        // cluster): one script checks the claim and writes.
        let claim = self.claim_key(&self.instance_id);
        for (ks, rs) in keys.chunks(APPEND_CHUNK).zip(records.chunks(APPEND_CHUNK)) {
            let mut script_keys: Vec<&str> = Vec::with_capacity(ks.len() + 1);
            script_keys.push(&claim);
            script_keys.extend(ks.iter().map(String::as_str));
            let values: Vec<Value> = rs.iter().map(|r| Value::Bytes(self.encode(r).into())).collect();
            let written: i64 = self
                .client
                .eval(APPEND_SCRIPT, script_keys, values)
                .await
                .map_err(|e| transient("MSET", e))?;
            if written == 0 {
                return Err(being_adopted());
            }
        }
        Ok(keys.into_iter().map(BufferKey).collect())
    }

    async fn remove(&self, keys: &[BufferKey]) -> Result<(), BufferError> {
        let names: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        self.unlink_all(&names).await.map_err(|e| transient("UNLINK", e))
    }

    async fn restore(&self) -> Result<Vec<(BufferKey, Record)>, BufferError> {
        self.load(&self.instance_id).await
    }

    async fn healthcheck(&self) -> Result<(), BufferError> {
        self.ping_all().await.map_err(|e| transient("PING", e))?;
        self.settle().await.map_err(|e| transient("UNLINK of a failed append's keys", e))?;
        let claimed: i64 = self
            .client
            .exists(self.claim_key(&self.instance_id))
            .await
            .map_err(|e| transient("EXISTS", e))?;
        if claimed > 0 {
            return Err(BufferError::transient(
                "this instance's buffer is being adopted by another instance",
            ));
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), BufferError> {
        // Give up the lease: whatever is left (a drain that timed out) is adopted at once by a
        // live instance, or restored by our successor under the same id.
        let _ = self.client.del::<(), _>(self.lease_key(&self.instance_id)).await;
        if self.scan_keys().await.is_ok_and(|k| k.is_empty()) {
            let _ = self.client.srem::<(), _, _>(self.registry_key(), self.instance_id.as_str()).await;
        }
        self.client.quit().await.map_err(|e| transient("QUIT", e))
    }

    fn read_back(&self) -> Option<&dyn ReadBack> {
        Some(self)
    }

    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }
}

#[async_trait]
impl ReadBack for RedisBuffer {
    async fn fetch(&self, keys: &[BufferKey]) -> Result<Vec<Option<Record>>, BufferError> {
        let names: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let values = self.mget_all(&names).await.map_err(|e| transient("MGET", e))?;
        let mut out = Vec::with_capacity(keys.len());
        for (key, value) in keys.iter().zip(values) {
            let bytes = match value {
                Value::Null => {
                    out.push(None);
                    continue;
                }
                Value::Bytes(b) => b,
                Value::String(s) => s.into_inner(),
                other => {
                    self.quarantine(&key.0, &format!("unexpected value type {:?}", other.kind())).await?;
                    out.push(None);
                    continue;
                }
            };
            match decode_record(&bytes) {
                Ok(record) => out.push(Some(record)),
                Err(e) => {
                    self.quarantine(&key.0, &e.to_string()).await?;
                    out.push(None);
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Leases for RedisBuffer {
    fn heartbeat_interval(&self) -> Duration {
        self.lease_ttl / 3
    }

    async fn heartbeat(&self) -> Result<(), BufferError> {
        self.renew_lease().await.map_err(|e| transient("lease renewal", e))
    }

    async fn claim_orphan(&self) -> Result<Option<Orphan>, BufferError> {
        let members: Vec<String> =
            self.client.smembers(self.registry_key()).await.map_err(|e| transient("SMEMBERS", e))?;
        for instance in members {
            if instance == self.instance_id || !is_key_segment(&instance) {
                continue;
            }
            let claim_ttl = (self.lease_ttl.as_millis() * 10).to_string();
            // Lease and claim share a slot (one server, or the id's hash tag in a cluster).
            let won: i64 = self
                .client
                .eval(
                    CLAIM_SCRIPT,
                    vec![self.lease_key(&instance), self.claim_key(&instance)],
                    vec![self.instance_id.clone(), claim_ttl],
                )
                .await
                .map_err(|e| transient("orphan claim", e))?;
            if won == 1 {
                let records = self.load(&instance).await?;
                tracing::info!(orphan = %instance, records = records.len(), "claimed the buffer of an instance whose lease expired");
                return Ok(Some(Orphan { instance, records }));
            }
        }
        Ok(None)
    }

    async fn release_orphan(&self, instance: &str) -> Result<(), BufferError> {
        let left = self.scan_keys_of(instance).await.map_err(|e| transient("SCAN", e))?;
        if left.is_empty() {
            self.client
                .srem::<(), _, _>(self.registry_key(), instance)
                .await
                .map_err(|e| transient("SREM", e))?;
        }
        self.client.del::<(), _>(self.claim_key(instance)).await.map_err(|e| transient("DEL", e))
    }
}

impl RedisBuffer {
    fn encode(&self, record: &Record) -> Vec<u8> {
        match self.compression {
            Compression::None => encode_record(record),
            Compression::Zstd => encode_record_zstd(record, 1),
        }
    }

    /// Every record of `instance`'s buffer, in key (arrival) order; undecodable values are
    /// quarantined.
    async fn load(&self, instance: &str) -> Result<Vec<(BufferKey, Record)>, BufferError> {
        if self.clustered {
            self.clear_pending(instance).await.map_err(|e| transient("cleanup of a cut-short append", e))?;
        }
        let keys = self.scan_keys_settled(instance).await.map_err(|e| transient("SCAN", e))?;
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PAGE) {
            let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let values = self.mget_all(&names).await.map_err(|e| transient("MGET", e))?;
            for (key, value) in chunk.iter().zip(values) {
                let bytes = match value {
                    Value::Null => continue, // deleted between SCAN and MGET
                    Value::Bytes(b) => b.to_vec(),
                    Value::String(s) => s.as_bytes().to_vec(),
                    other => {
                        self.quarantine(key, &format!("unexpected value type {:?}", other.kind())).await?;
                        continue;
                    }
                };
                match decode_record(&bytes) {
                    Ok(record) => out.push((BufferKey(key.clone()), record)),
                    Err(e) => self.quarantine(key, &e.to_string()).await?,
                }
            }
        }
        Ok(out)
    }

    /// Where an undecodable key is moved: `<prefix>:buffer:<rest>` → `<prefix>:quarantine:<rest>`.
    /// `RENAME` needs both in one slot in a cluster: a hash-tagged key keeps its tag; a plain one
    /// becomes `<prefix>:quarantine:{<key>}`, which hashes as the key did.
    fn quarantine_target(&self, key: &str) -> String {
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

    async fn quarantine(&self, key: &str, reason: &str) -> Result<(), BufferError> {
        let target = self.quarantine_target(key);
        tracing::error!(key, target = %target, reason, "buffered record cannot be decoded; moved aside for inspection");
        self.client.rename::<(), _, _>(key, target.as_str()).await.map_err(|e| transient("RENAME", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
