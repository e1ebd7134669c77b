//! The buffer itself: connecting, the [`Buffer`] and [`ReadBack`] implementations, encoding,
//! restore and quarantine, and the persistence check.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dp_core::{
    Buffer, BufferError, BufferKey, Leases, ReadBack, Record, decode_record_with, encode_record,
    encode_record_zstd, encode_record_zstd_dict,
};
use fred::prelude::*;

use crate::cluster::PAGE;
use crate::config::{Compression, RedisBufferConfig, RedisMode};
use crate::keys::{KeyNames, is_key_segment};
use crate::lease::being_adopted;
use crate::security::connect_error;
use crate::{RedisBuffer, RedisBufferError, transient};

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

/// Writes records only while nobody has claimed this instance's buffer: an instance whose lease
/// expired while it was alive (Redis unreachable for longer than the TTL) must not add keys
/// under an adopter's `SCAN`, which could miss them and let the watermark jump a gap.
/// `KEYS[1]` is the claim, `KEYS[2..]` the records' keys (declared, so a Redis Cluster can check
/// they share the claim's slot) and `ARGV` their values.
pub(crate) const APPEND_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[i - 1]) end
return 1
"#;

/// Records per `APPEND_SCRIPT` call, so one script does not block Redis for long.
pub(crate) const APPEND_CHUNK: usize = 1000;

impl RedisBuffer {
    /// Connects to Redis. Commands that cannot be sent are retried by the client's reconnect
    /// policy until `command_timeout`; the connection itself is re-established forever.
    pub async fn connect(config: &RedisBufferConfig, instance_id: &str) -> Result<Self, RedisBufferError> {
        if !is_key_segment(instance_id) {
            return Err(RedisBufferError::InstanceId(instance_id.to_owned()));
        }
        let client = connect_client(config).await?;
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
            dictionaries: Arc::default(),
            unclaimed_until: Arc::default(),
            clustered: config.mode == RedisMode::Cluster,
            hash_tag: config.hash_tag,
            unsettled: Arc::default(),
            key_names: KeyNames::default(),
        };
        // Claim our own buffer before anything else, so nobody adopts it while we restore.
        buffer.renew_lease().await.map_err(|source| connect_error(config.url.redacted(), source))?;
        if config.compression == Compression::ZstdDictionary {
            buffer
                .load_published_dictionary()
                .await
                .map_err(|source| connect_error(config.url.redacted(), source))?;
        }
        Ok(buffer)
    }

    /// How many write-ahead keys every instance under `redis.key_prefix` holds now, both key
    /// forms, on every primary of a cluster: records buffered by instances that were killed
    /// (or still run), which the next start of the group writes before reading any partition.
    /// Connects without registering an instance or taking a lease.
    pub async fn buffered_by_anyone(config: &RedisBufferConfig) -> Result<usize, RedisBufferError> {
        use futures::TryStreamExt as _;
        let client = connect_client(config).await?;
        let pattern = format!("{}:buffer:*", config.key_prefix);
        let found: Result<Vec<fred::types::Key>, fred::error::Error> = if config.mode == RedisMode::Cluster {
            client.scan_cluster_buffered(pattern, Some(1000), None).try_collect().await
        } else {
            client.scan_buffered(pattern, Some(1000), None).try_collect().await
        };
        let _ = client.quit().await;
        found.map(|keys| keys.len()).map_err(|source| connect_error(config.url.redacted(), source))
    }
}

/// A client of the configured Redis, connected and answering a ping within `connect_timeout`.
async fn connect_client(config: &RedisBufferConfig) -> Result<Client, RedisBufferError> {
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
    Ok(client)
}

impl RedisBuffer {
    /// The underlying client, for callers that need other commands (tests, health checks).
    pub fn client(&self) -> &Client {
        &self.client
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

    /// What `encode` compresses with: the dictionary in use (`zstd-dictionary` once one is
    /// stored), read once per append.
    pub(crate) fn encoding(&self) -> Option<dp_core::Dictionary> {
        match self.compression {
            Compression::ZstdDictionary => self.current_dictionary(),
            Compression::None | Compression::Zstd => None,
        }
    }

    pub(crate) fn encode(&self, record: &Record, dictionary: Option<&dp_core::Dictionary>) -> Vec<u8> {
        match (self.compression, dictionary) {
            (Compression::None, _) => encode_record(record),
            (_, Some(dictionary)) => encode_record_zstd_dict(record, 1, dictionary),
            (Compression::Zstd | Compression::ZstdDictionary, None) => encode_record_zstd(record, 1),
        }
    }

    /// Every record of `instance`'s buffer, in key (arrival) order; undecodable values are
    /// quarantined.
    pub(crate) async fn load(&self, instance: &str) -> Result<Vec<(BufferKey, Record)>, BufferError> {
        if self.clustered {
            self.clear_pending(instance).await.map_err(|e| transient("cleanup of a cut-short append", e))?;
        }
        let keys = self.scan_keys_settled(instance).await.map_err(|e| transient("SCAN", e))?;
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PAGE) {
            let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let values = self.mget_all(&names).await.map_err(|e| transient("MGET", e))?;
            let dictionaries = self.dictionaries_for(values.iter().filter_map(Value::as_bytes)).await?;
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
                match decode_record_with(&bytes, &dictionaries) {
                    Ok(record) => out.push((BufferKey(key.clone()), record)),
                    Err(e) => self.quarantine(key, &e.to_string()).await?,
                }
            }
        }
        Ok(out)
    }

    pub(crate) async fn quarantine(&self, key: &str, reason: &str) -> Result<(), BufferError> {
        let target = self.quarantine_target(key);
        tracing::error!(key, target = %target, reason, "buffered record cannot be decoded; moved aside for inspection");
        self.client.rename::<(), _, _>(key, target.as_str()).await.map_err(|e| transient("RENAME", e))
    }
}

pub(crate) async fn read_persistence<C: ConfigInterface>(
    client: &C,
) -> Result<Persistence, fred::error::Error> {
    let get = |name: &'static str| async move {
        let pairs: Vec<String> = client.config_get(name).await?;
        Ok::<String, fred::error::Error>(pairs.get(1).cloned().unwrap_or_default())
    };
    Ok(Persistence { appendonly: get("appendonly").await?, appendfsync: get("appendfsync").await? })
}

impl RedisBuffer {
    /// Writes `records` under `keys` (named in arrival order) by the way the deployment takes:
    /// spread over a cluster's slots, a plain `MSET` while no claim can exist, or the fenced
    /// script that checks the claim.
    async fn write_appended(&self, keys: &[String], records: &[Record]) -> Result<(), BufferError> {
        let dictionary = self.encoding();
        if self.spread() {
            return self.append_spread(keys, records, dictionary.as_ref()).await;
        }
        if self.surely_unclaimed() {
            // `MSET` as its arguments, key and value in turn: fred's `mset` takes a `Map`, which
            // hashes every key into a `HashMap` only to unpack it again (`Map::try_from` was 1.5%
            // of the process's samples under a backlog, `perf`). The keys share a slot when
            // clustered (the hash tag).
            let mut args: Vec<Value> = Vec::with_capacity(records.len() * 2);
            for (key, record) in keys.iter().zip(records) {
                args.push(Value::from(key.as_str()));
                args.push(Value::Bytes(self.encode(record, dictionary.as_ref()).into()));
            }
            let mset =
                fred::types::CustomCommand::new_static("MSET", fred::types::ClusterHash::FirstKey, false);
            let _: Value = self.client.custom(mset, args).await.map_err(|e| transient("MSET", e))?;
            return Ok(());
        }
        // The claim and the keys share a slot (one server, or the instance id's hash tag in a
        // cluster): one script checks the claim and writes.
        let claim = self.claim_key(&self.instance_id);
        for (ks, rs) in keys.chunks(APPEND_CHUNK).zip(records.chunks(APPEND_CHUNK)) {
            let mut script_keys: Vec<&str> = Vec::with_capacity(ks.len() + 1);
            script_keys.push(&claim);
            script_keys.extend(ks.iter().map(String::as_str));
            let values: Vec<Value> =
                rs.iter().map(|r| Value::Bytes(self.encode(r, dictionary.as_ref()).into())).collect();
            let written: i64 = self
                .client
                .eval(APPEND_SCRIPT, script_keys, values)
                .await
                .map_err(|e| transient("MSET", e))?;
            if written == 0 {
                return Err(being_adopted());
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Buffer for RedisBuffer {
    async fn append(&self, records: &[Record]) -> Result<Vec<BufferKey>, BufferError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.key_names.new_keys(&self.buffer_prefix, records.len());
        self.write_appended(&keys, records).await?;
        self.learn_from(records).await;
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
        let dictionaries = self.dictionaries_for(values.iter().filter_map(Value::as_bytes)).await?;
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
            match decode_record_with(&bytes, &dictionaries) {
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
