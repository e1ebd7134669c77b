//! The `[redis]` settings: where Redis is (one server, Sentinel, Cluster), TLS and
//! authentication, keys, timeouts and compression; their validation; and how they reach the
//! client's configuration.

use std::path::PathBuf;
use std::time::Duration;

use dp_core::{SecretUrl, TlsConfig};
use fred::prelude::*;
use serde::{Deserialize, Serialize};

use crate::keys::is_key_segment;
use crate::{RedisBufferError, security};

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
    /// Compression of each buffered record: `none`, `zstd` (about 25% less Redis memory for
    /// ~500-byte JSON events, for a little CPU) or `zstd-dictionary` (zstd with a dictionary
    /// trained on the first 2,000 records and kept in Redis under `<key_prefix>:dictionary`;
    /// about a third of the Redis memory of `none` for such events). Records written any way are
    /// read back whatever this is set to, so it can be changed across restarts.
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
    /// zstd at level 1 with a dictionary shared under the key prefix, trained on the first
    /// records buffered (zstd alone until then).
    #[serde(rename = "zstd-dictionary")]
    ZstdDictionary,
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
    pub(crate) fn apply_topology(&self, cfg: &mut Config) {
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
pub(crate) fn parse_node(node: &str) -> Result<(String, u16), &'static str> {
    let (host, port) = node.trim().rsplit_once(':').ok_or("must be host:port")?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err("must be host:port (the scheme and credentials come from redis.url)");
    }
    let port = port.parse::<u16>().ok().filter(|&p| p > 0).ok_or("must end in a port number 1-65535")?;
    Ok((host.to_owned(), port))
}

/// Whether the URL names a port (`redis://host` does not).
pub(crate) fn url_has_port(url: &str) -> bool {
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
