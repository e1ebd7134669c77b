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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dp_core::{
    Buffer, BufferError, BufferKey, Orphan, Record, SecretUrl, decode_record, encode_record,
    encode_record_zstd,
};
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Settings of the Redis buffer (`[redis]` in the config file, `DP_REDIS__*` in the environment).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisBufferConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: SecretUrl,
    /// First segment of every key: keys are `<key_prefix>:buffer:<instance-id>:<uuid>`.
    pub key_prefix: String,
    /// How long one Redis command may take before it counts as failed.
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
            key_prefix: "msg".into(),
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
        if !self.url.expose().starts_with("redis://") {
            return Err(format!("redis.url: `{}` must start with redis://", self.url.redacted()));
        }
        Config::from_url(self.url.expose())
            .map_err(|e| format!("redis.url: `{}` is not a valid redis URL: {e}", self.url.redacted()))?;
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
    #[error("redis.url: cannot connect to redis at {url}: {source} (is Redis running there?)")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// The client's error.
        source: fred::error::Error,
    },
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
}

/// Writes records only while nobody has claimed this instance's buffer: an instance whose lease
/// expired while it was alive (Redis unreachable for longer than the TTL) must not add keys
/// under an adopter's `SCAN`, which could miss them and let the watermark jump a gap.
const APPEND_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('MSET', unpack(ARGV))
return 1
"#;

/// Registers the instance, renews its lease and reports whether someone holds a claim on it,
/// in one atomic step.
const RENEW_SCRIPT: &str = r#"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return redis.call('EXISTS', KEYS[3])
"#;

/// Key/value pairs per `APPEND_SCRIPT` call (Lua's `unpack` takes a few thousand arguments).
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
        let cfg = Config::from_url(config.url.expose())
            .map_err(|source| RedisBufferError::Config { url: url.clone(), source })?;
        let client = Builder::from_config(cfg)
            .with_connection_config(|c| {
                c.connection_timeout = config.connect_timeout;
                c.internal_command_timeout = config.command_timeout;
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
            Ok(Err(source)) => return Err(RedisBufferError::Connect { url, source }),
            Err(_) => {
                let _ = client.quit().await;
                return Err(RedisBufferError::Connect {
                    url,
                    source: fred::error::Error::new(fred::error::ErrorKind::Timeout, "connection timed out"),
                });
            }
        }
        let buffer = Self {
            client,
            instance_id: instance_id.to_owned(),
            key_prefix: config.key_prefix.clone(),
            buffer_prefix: format!("{}:buffer:{instance_id}:", config.key_prefix),
            quarantine_prefix: format!("{}:quarantine:{instance_id}:", config.key_prefix),
            lease_ttl: config.lease_ttl,
            compression: config.compression,
            unclaimed_until: Arc::default(),
        };
        // Claim our own buffer before anything else, so nobody adopts it while we restore.
        buffer
            .renew_lease()
            .await
            .map_err(|source| RedisBufferError::Connect { url: config.url.redacted(), source })?;
        Ok(buffer)
    }

    fn registry_key(&self) -> String {
        format!("{}:instances", self.key_prefix)
    }

    fn lease_key(&self, instance: &str) -> String {
        format!("{}:lease:{instance}", self.key_prefix)
    }

    fn claim_key(&self, instance: &str) -> String {
        format!("{}:claim:{instance}", self.key_prefix)
    }

    fn buffer_prefix_of(&self, instance: &str) -> String {
        format!("{}:buffer:{instance}:", self.key_prefix)
    }

    async fn renew_lease(&self) -> Result<(), fred::error::Error> {
        let sent = Instant::now();
        let claimed: i64 = self
            .client
            .eval(
                RENEW_SCRIPT,
                vec![
                    self.registry_key(),
                    self.lease_key(&self.instance_id),
                    self.claim_key(&self.instance_id),
                ],
                vec![
                    self.instance_id.clone(),
                    now_millis().to_string(),
                    (self.lease_ttl.as_millis() as i64).to_string(),
                ],
            )
            .await?;
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

    /// The `SCAN MATCH` pattern of this instance's keys.
    pub fn key_pattern(&self) -> String {
        format!("{}*", self.buffer_prefix)
    }

    fn surely_unclaimed(&self) -> bool {
        self.unclaimed_until.lock().ok().and_then(|u| *u).is_some_and(|u| Instant::now() < u)
    }

    /// Redis's persistence settings (`CONFIG GET appendonly` and `appendfsync`).
    pub async fn persistence(&self) -> Result<Persistence, fred::error::Error> {
        let get = |name: &'static str| async move {
            let pairs: Vec<String> = self.client.config_get(name).await?;
            Ok::<String, fred::error::Error>(pairs.get(1).cloned().unwrap_or_default())
        };
        Ok(Persistence { appendonly: get("appendonly").await?, appendfsync: get("appendfsync").await? })
    }

    /// How many write-ahead keys this instance has in Redis now.
    pub async fn count_keys(&self) -> Result<usize, fred::error::Error> {
        Ok(self.scan_keys().await?.len())
    }

    async fn scan_keys(&self) -> Result<Vec<String>, fred::error::Error> {
        self.scan_keys_of(&self.buffer_prefix).await
    }

    async fn scan_keys_of(&self, prefix: &str) -> Result<Vec<String>, fred::error::Error> {
        use futures::TryStreamExt as _;
        let mut keys: Vec<String> = self
            .client
            .scan_buffered(format!("{prefix}*"), Some(PAGE as u32), None)
            .map_ok(|k| k.into_string().unwrap_or_default())
            .try_collect()
            .await?;
        keys.retain(|k| !k.is_empty());
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }
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
        if self.surely_unclaimed() {
            let pairs: Vec<(&str, Vec<u8>)> =
                keys.iter().map(String::as_str).zip(records.iter().map(|r| self.encode(r))).collect();
            self.client.mset(pairs).await.map_err(|e| transient("MSET", e))?;
            return Ok(keys.into_iter().map(BufferKey).collect());
        }
        let claim = self.claim_key(&self.instance_id);
        for (ks, rs) in keys.chunks(APPEND_CHUNK).zip(records.chunks(APPEND_CHUNK)) {
            let mut args: Vec<Value> = Vec::with_capacity(ks.len() * 2);
            for (k, r) in ks.iter().zip(rs) {
                args.push(Value::from(k.as_str()));
                args.push(Value::Bytes(self.encode(r).into()));
            }
            let written: i64 = self
                .client
                .eval(APPEND_SCRIPT, vec![claim.as_str()], args)
                .await
                .map_err(|e| transient("MSET", e))?;
            if written == 0 {
                return Err(BufferError::transient(
                    "this instance's buffer is being adopted by another instance (its lease had expired); holding records in memory",
                ));
            }
        }
        Ok(keys.into_iter().map(BufferKey).collect())
    }

    async fn remove(&self, keys: &[BufferKey]) -> Result<(), BufferError> {
        for chunk in keys.chunks(PAGE) {
            let names: Vec<&str> = chunk.iter().map(|k| k.0.as_str()).collect();
            self.client.unlink::<i64, _>(names).await.map_err(|e| transient("UNLINK", e))?;
        }
        Ok(())
    }

    fn can_fetch(&self) -> bool {
        true
    }

    async fn fetch(&self, keys: &[BufferKey]) -> Result<Vec<Option<Record>>, BufferError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PAGE) {
            let names: Vec<&str> = chunk.iter().map(|k| k.0.as_str()).collect();
            let values: Vec<Value> = self.client.mget(names).await.map_err(|e| transient("MGET", e))?;
            for (key, value) in chunk.iter().zip(values) {
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
        }
        Ok(out)
    }

    async fn restore(&self) -> Result<Vec<(BufferKey, Record)>, BufferError> {
        self.load(&self.buffer_prefix.clone()).await
    }

    async fn healthcheck(&self) -> Result<(), BufferError> {
        self.client.ping::<()>(None).await.map_err(|e| transient("PING", e))?;
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

    fn heartbeat_interval(&self) -> Option<Duration> {
        Some(self.lease_ttl / 3)
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
                let records = self.load(&self.buffer_prefix_of(&instance)).await?;
                tracing::info!(orphan = %instance, records = records.len(), "claimed the buffer of an instance whose lease expired");
                return Ok(Some(Orphan { instance, records }));
            }
        }
        Ok(None)
    }

    async fn release_orphan(&self, instance: &str) -> Result<(), BufferError> {
        let left =
            self.scan_keys_of(&self.buffer_prefix_of(instance)).await.map_err(|e| transient("SCAN", e))?;
        if left.is_empty() {
            self.client
                .srem::<(), _, _>(self.registry_key(), instance)
                .await
                .map_err(|e| transient("SREM", e))?;
        }
        self.client.del::<(), _>(self.claim_key(instance)).await.map_err(|e| transient("DEL", e))
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
}

impl RedisBuffer {
    fn encode(&self, record: &Record) -> Vec<u8> {
        match self.compression {
            Compression::None => encode_record(record),
            Compression::Zstd => encode_record_zstd(record, 1),
        }
    }

    /// Every record under `prefix`, in key (arrival) order; undecodable values are quarantined.
    async fn load(&self, prefix: &str) -> Result<Vec<(BufferKey, Record)>, BufferError> {
        let keys = self.scan_keys_of(prefix).await.map_err(|e| transient("SCAN", e))?;
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PAGE) {
            let values: Vec<Value> =
                self.client.mget(chunk.to_vec()).await.map_err(|e| transient("MGET", e))?;
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

    async fn quarantine(&self, key: &str, reason: &str) -> Result<(), BufferError> {
        // <prefix>:buffer:<instance>:<uuid> → <prefix>:quarantine:<instance>:<uuid>
        let marker = format!("{}:buffer:", self.key_prefix);
        let target = match key.strip_prefix(&marker) {
            Some(rest) => format!("{}:quarantine:{rest}", self.key_prefix),
            None => format!("{}{key}", self.quarantine_prefix),
        };
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
}
