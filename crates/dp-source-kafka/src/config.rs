use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use dp_core::{Secret, TlsConfig, TlsVerify};
use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize, Serializer};

/// Settings of the Kafka source (`[kafka]` in the config file, `DP_KAFKA__*` in the environment).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Topics to consume; in the environment a comma-separated list.
    #[serde(deserialize_with = "dp_core::string_or_list")]
    pub topics: Vec<String>,
    /// Consumer group id.
    pub group_id: String,
    /// Consumer-group session timeout: a member silent this long is evicted.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often stored (durable) offsets are committed to Kafka.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// After the first record of a poll arrives, how long to keep collecting records that
    /// arrive right behind it, so they share one write to the buffer.
    #[serde(with = "humantime_serde")]
    pub poll_linger: Duration,
    /// On a rebalance, how long revoked partitions wait for what is buffered of them to be
    /// delivered and committed before they are let go. Must be below `session_timeout`.
    #[serde(with = "humantime_serde")]
    pub revocation_timeout: Duration,
    /// TLS to the brokers (`[kafka.tls]`): off unless enabled; when on, each broker's
    /// certificate is verified against `ca_file` (or the system's trust store) and must name
    /// the broker.
    pub tls: TlsConfig,
    /// SASL authentication (`[kafka.sasl]`): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    pub sasl: SaslConfig,
    /// Extra librdkafka settings (e.g. `"partition.assignment.strategy" = "cooperative-sticky"`).
    /// The settings this source relies on for its guarantees cannot be overridden here, nor,
    /// while `tls` or `sasl` is used, the security settings they make. Values of secret-named
    /// settings (`*password*`, `*secret*`, …) are shown as `***`.
    pub properties: Properties,
}

/// SASL authentication to the brokers (`[kafka.sasl]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; unset: no SASL.
    pub mechanism: Option<SaslMechanism>,
    /// The SASL user name.
    pub username: Option<String>,
    /// The password itself (better from the environment, `DP_KAFKA__SASL__PASSWORD`, than in a
    /// file under version control). Shown as `***`.
    pub password: Option<Secret>,
    /// A file holding the password (a mounted Kubernetes secret), read at startup; one
    /// trailing newline is dropped.
    pub password_file: Option<PathBuf>,
}

/// A SASL mechanism librdkafka implements without extra libraries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// The password in clear inside the (TLS) connection.
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response with SHA-256: the password never crosses the wire.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's name of the mechanism (`sasl.mechanisms`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Extra librdkafka settings, name → value. `Debug` and `Serialize` show the values of
/// secret-named settings (see [`dp_core::is_secret_name`]) as `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Properties(pub BTreeMap<String, String>);

impl Properties {
    fn redacted(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| (k.as_str(), if dp_core::is_secret_name(k) { "***" } else { v.as_str() }))
            .collect()
    }
}

impl std::ops::Deref for Properties {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromIterator<(String, String)> for Properties {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(s)
    }
}

impl Default for KafkaSourceConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topics: vec!["delivery-events".into()],
            group_id: "delivery-pipeline".into(),
            session_timeout: Duration::from_secs(30),
            commit_interval: Duration::from_secs(5),
            poll_linger: Duration::from_millis(10),
            revocation_timeout: Duration::from_secs(10),
            tls: TlsConfig::default(),
            sasl: SaslConfig::default(),
            properties: Properties::default(),
        }
    }
}

/// Settings the source sets itself; overriding them would break its delivery guarantee.
const RESERVED: &[&str] = &[
    "enable.auto.offset.store",
    "enable.auto.commit",
    "group.id",
    "bootstrap.servers",
    "enable.partition.eof",
];

/// Settings `kafka.tls` and `kafka.sasl` make; `properties` may not set them while either is used.
const SECURITY: &[&str] = &[
    "security.protocol",
    "ssl.ca.location",
    "ssl.ca.pem",
    "ssl.certificate.location",
    "ssl.certificate.pem",
    "ssl.key.location",
    "ssl.key.pem",
    "enable.ssl.certificate.verification",
    "ssl.endpoint.identification.algorithm",
    "sasl.mechanisms",
    "sasl.mechanism",
    "sasl.username",
    "sasl.password",
];

impl KafkaSourceConfig {
    /// Checks the settings without connecting. Errors name the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("kafka.brokers: must not be empty; set it to host:port[,host:port…]".into());
        }
        for b in self.brokers.split(',') {
            let b = b.trim();
            let port_ok = b.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!("kafka.brokers: `{b}` is not host:port"));
            }
        }
        if self.topics.is_empty() {
            return Err("kafka.topics: at least one topic is required".into());
        }
        for t in &self.topics {
            if !is_topic_name(t) {
                return Err(format!(
                    "kafka.topics: `{t}` is not a valid topic name (1-249 of [a-zA-Z0-9._-])"
                ));
            }
        }
        if self.group_id.trim().is_empty() {
            return Err("kafka.group_id: must not be empty".into());
        }
        if self.session_timeout < Duration::from_secs(1) {
            return Err("kafka.session_timeout: must be at least 1s".into());
        }
        if self.poll_linger > Duration::from_secs(10) {
            return Err("kafka.poll_linger: at most 10s".into());
        }
        if self.session_timeout > Duration::from_secs(3600)
            || self.commit_interval > Duration::from_secs(3600)
        {
            return Err("kafka.session_timeout / kafka.commit_interval: at most 1h".into());
        }
        if self.revocation_timeout >= self.session_timeout {
            return Err(format!(
                "kafka.revocation_timeout: {:?} must be below kafka.session_timeout ({:?})",
                self.revocation_timeout, self.session_timeout
            ));
        }
        if self.commit_interval.is_zero() {
            return Err("kafka.commit_interval: must be greater than zero".into());
        }
        if let Some(k) = self.properties.keys().find(|k| RESERVED.contains(&k.as_str())) {
            return Err(format!(
                "kafka.properties.{k}: set by delivery-pipeline itself and cannot be overridden"
            ));
        }
        self.tls.validate("kafka.tls", self.tls.enabled)?;
        self.validate_sasl()?;
        let secured = self.tls.enabled || self.sasl.mechanism.is_some();
        if let Some(k) = self.properties.keys().find(|k| secured && SECURITY.contains(&k.as_str())) {
            return Err(format!(
                "kafka.properties.{k}: made by kafka.tls / kafka.sasl, which are in use; remove it from kafka.properties"
            ));
        }
        Ok(())
    }

    fn validate_sasl(&self) -> Result<(), String> {
        let s = &self.sasl;
        if s.password_file.as_deref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err("kafka.sasl.password_file: must not be empty; remove it, or give a file".into());
        }
        let Some(mechanism) = s.mechanism else {
            if s.username.is_some() || s.password.is_some() || s.password_file.is_some() {
                return Err(
                    "kafka.sasl.mechanism: required with a SASL user or password (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
                        .into(),
                );
            }
            return Ok(());
        };
        if s.username.as_deref().is_none_or(|u| u.trim().is_empty()) {
            return Err(format!(
                "kafka.sasl.username: required with kafka.sasl.mechanism = {}",
                mechanism.as_str()
            ));
        }
        match (&s.password, &s.password_file) {
            (Some(_), Some(_)) => Err(
                "kafka.sasl.password_file: kafka.sasl.password is set too; give the password in one place only".into(),
            ),
            (None, None) => Err(format!(
                "kafka.sasl.password: required with kafka.sasl.mechanism = {} (or kafka.sasl.password_file)",
                mechanism.as_str()
            )),
            (Some(p), None) if p.expose().is_empty() => Err("kafka.sasl.password: must not be empty".into()),
            _ => Ok(()),
        }
    }

    /// The librdkafka settings of `tls` and `sasl` (`security.protocol`, `ssl.*`, `sasl.*`),
    /// with the SASL password read from `sasl.password_file` when set. Nothing when neither is
    /// used: `properties` may then say what it likes. Errors name the setting.
    pub fn security_properties(&self) -> Result<Vec<(&'static str, String)>, String> {
        let password = match (&self.sasl.password, &self.sasl.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(file)) => Some(dp_core::read_secret_file("kafka.sasl.password_file", file)?),
            (None, None) => None,
        };
        Ok(self.security_properties_with(password.as_ref()))
    }

    fn security_properties_with(&self, password: Option<&Secret>) -> Vec<(&'static str, String)> {
        let tls = &self.tls;
        let mut out: Vec<(&'static str, String)> = Vec::new();
        let protocol = match (tls.enabled, self.sasl.mechanism.is_some()) {
            (false, false) => return out,
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        };
        out.push(("security.protocol", protocol.to_owned()));
        if tls.enabled {
            let path = |p: &PathBuf| p.to_string_lossy().into_owned();
            if let Some(ca) = &tls.ca_file {
                out.push(("ssl.ca.location", path(ca)));
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                out.push(("ssl.certificate.location", path(cert)));
                out.push(("ssl.key.location", path(key)));
            }
            let (verify_chain, verify_name) = match tls.verify {
                TlsVerify::Full => (true, true),
                TlsVerify::Ca => (true, false),
                TlsVerify::None => (false, false),
            };
            out.push(("enable.ssl.certificate.verification", verify_chain.to_string()));
            out.push((
                "ssl.endpoint.identification.algorithm",
                (if verify_name { "https" } else { "none" }).to_owned(),
            ));
        }
        if let Some(mechanism) = self.sasl.mechanism {
            out.push(("sasl.mechanisms", mechanism.as_str().to_owned()));
            out.push(("sasl.username", self.sasl.username.clone().unwrap_or_default()));
            out.push(("sasl.password", password.map(|p| p.expose().to_owned()).unwrap_or_default()));
        }
        out
    }

    /// The configuration every client of the configured cluster starts from — the consumer,
    /// the dead-letter producer, the command line's producers and admin clients: the brokers,
    /// `properties`, then the security settings of `tls` and `sasl`. Reads the SASL password
    /// file; the error names the setting.
    pub fn common_client_config(&self) -> Result<ClientConfig, String> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        self.add_security(&mut c)?;
        Ok(c)
    }

    fn add_security(&self, c: &mut ClientConfig) -> Result<(), String> {
        if self.sasl.mechanism == Some(SaslMechanism::Plain) && !self.tls.enabled {
            tracing::warn!("kafka.sasl: PLAIN without kafka.tls sends the password in clear text");
        }
        for (k, v) in self.security_properties()? {
            c.set(k, v);
        }
        Ok(())
    }

    /// The librdkafka configuration for a consumer of 1000-row batches. Reads the SASL
    /// password file; the error names the setting.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        self.client_config_for(1000)
    }

    /// The librdkafka configuration for a consumer whose records are written in batches of
    /// `batch_rows`: librdkafka prefetches about four such batches (of 1 KiB records), not its
    /// default 64 MiB. Reads the SASL password file; the error names the setting.
    pub fn client_config_for(&self, batch_rows: usize) -> Result<ClientConfig, String> {
        let (kib, per_partition) = prefetch(batch_rows);
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", self.commit_interval.as_millis().to_string())
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", self.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (self.session_timeout.as_millis() / 3).max(100).to_string())
            // Broker reachability and consumer lag come from these statistics.
            .set("statistics.interval.ms", "5000")
            // librdkafka prefetches up to 64 MiB (and 100,000 records a partition) by default:
            // memory, not speed, since the pipeline takes records a batch at a time. `properties`
            // may override these.
            .set("queued.max.messages.kbytes", kib.to_string())
            .set("queued.min.messages", per_partition.to_string())
            // Once that queue is full, librdkafka waits this long before it fetches again
            // (default 1 s): with a small queue the pipeline would drain it and then wait most
            // of that second for records (docs/PERFORMANCE.md).
            .set("fetch.queue.backoff.ms", "10");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        self.add_security(&mut c)?;
        Ok(c)
    }
}

/// librdkafka's prefetch for batches of `batch_rows`: KiB in all (four batches of 1 KiB
/// records, 1 to 64 MiB) and records per partition (two batches).
fn prefetch(batch_rows: usize) -> (usize, usize) {
    ((4 * batch_rows).clamp(1024, 64 * 1024), (2 * batch_rows).max(100))
}

/// Whether `name` is a valid Kafka topic name: 1-249 of `[a-zA-Z0-9._-]`.
pub fn is_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        KafkaSourceConfig::default().validate().expect("defaults validate");
    }

    #[test]
    fn invalid_settings_name_their_key() {
        let bad = |f: &dyn Fn(&mut KafkaSourceConfig)| {
            let mut c = KafkaSourceConfig::default();
            f(&mut c);
            c.validate().expect_err("must be rejected")
        };
        assert!(bad(&|c| c.brokers = "localhost".into()).starts_with("kafka.brokers"));
        assert!(bad(&|c| c.topics = vec![]).starts_with("kafka.topics"));
        assert!(bad(&|c| c.topics = vec!["a b".into()]).starts_with("kafka.topics"));
        assert!(bad(&|c| c.group_id = " ".into()).starts_with("kafka.group_id"));
        assert!(bad(&|c| c.revocation_timeout = c.session_timeout).starts_with("kafka.revocation_timeout"));
        assert!(
            bad(&|c| {
                c.properties.insert("enable.auto.offset.store".into(), "true".into());
            })
            .starts_with("kafka.properties.enable.auto.offset.store")
        );
    }

    fn get(props: &[(&'static str, String)], key: &str) -> Option<String> {
        props.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }

    fn tls_on() -> TlsConfig {
        TlsConfig { enabled: true, ..TlsConfig::default() }
    }

    fn sasl(mechanism: SaslMechanism) -> SaslConfig {
        SaslConfig {
            mechanism: Some(mechanism),
            username: Some("pipeline".into()),
            password: Some(Secret::new("s3cr3t")),
            password_file: None,
        }
    }

    #[test]
    fn tls_and_sasl_make_librdkafka_security_settings() {
        let plain = KafkaSourceConfig::default();
        assert!(plain.security_properties().expect("props").is_empty(), "nothing set: nothing added");
        assert_eq!(plain.client_config().expect("config").get("security.protocol"), None);

        let mut c = KafkaSourceConfig {
            tls: TlsConfig {
                ca_file: Some("/etc/kafka/ca.pem".into()),
                cert_file: Some("/etc/kafka/client.pem".into()),
                key_file: Some("/etc/kafka/client.key".into()),
                ..tls_on()
            },
            ..KafkaSourceConfig::default()
        };
        c.validate().expect("valid");
        let p = c.security_properties().expect("props");
        assert_eq!(get(&p, "security.protocol").as_deref(), Some("SSL"));
        assert_eq!(get(&p, "ssl.ca.location").as_deref(), Some("/etc/kafka/ca.pem"));
        assert_eq!(get(&p, "ssl.certificate.location").as_deref(), Some("/etc/kafka/client.pem"));
        assert_eq!(get(&p, "ssl.key.location").as_deref(), Some("/etc/kafka/client.key"));
        assert_eq!(get(&p, "enable.ssl.certificate.verification").as_deref(), Some("true"));
        assert_eq!(get(&p, "ssl.endpoint.identification.algorithm").as_deref(), Some("https"));
        assert_eq!(get(&p, "sasl.mechanisms"), None);

        c.tls.verify = TlsVerify::Ca;
        let p = c.security_properties().expect("props");
        assert_eq!(get(&p, "enable.ssl.certificate.verification").as_deref(), Some("true"));
        assert_eq!(get(&p, "ssl.endpoint.identification.algorithm").as_deref(), Some("none"));
        c.tls.verify = TlsVerify::None;
        let p = c.security_properties().expect("props");
        assert_eq!(get(&p, "enable.ssl.certificate.verification").as_deref(), Some("false"));

        c.sasl = sasl(SaslMechanism::ScramSha512);
        let p = c.security_properties().expect("props");
        assert_eq!(get(&p, "security.protocol").as_deref(), Some("SASL_SSL"));
        assert_eq!(get(&p, "sasl.mechanisms").as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(get(&p, "sasl.username").as_deref(), Some("pipeline"));
        assert_eq!(get(&p, "sasl.password").as_deref(), Some("s3cr3t"));

        let c = KafkaSourceConfig { sasl: sasl(SaslMechanism::ScramSha256), ..KafkaSourceConfig::default() };
        c.validate().expect("SASL without TLS is allowed");
        let consumer = c.client_config().expect("config");
        assert_eq!(consumer.get("security.protocol"), Some("SASL_PLAINTEXT"));
        assert_eq!(consumer.get("sasl.mechanisms"), Some("SCRAM-SHA-256"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"), "the guarantee settings stay");
        let common = c.common_client_config().expect("config");
        assert_eq!(common.get("sasl.password"), Some("s3cr3t"), "producers and admin clients too");
        assert_eq!(common.get("enable.auto.offset.store"), None, "no consumer settings there");
        let text = format!("{c:?}{}", serde_json::to_string(&c).expect("json"));
        assert!(!text.contains("s3cr3t"), "password printed: {text}");
    }

    #[test]
    fn the_sasl_password_comes_from_a_file() {
        let dir = std::env::temp_dir().join(format!("dp-kafka-sasl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("password");
        std::fs::write(&file, "from-file\n").expect("write");
        let mut c = KafkaSourceConfig {
            sasl: sasl(SaslMechanism::Plain),
            tls: tls_on(),
            ..KafkaSourceConfig::default()
        };
        c.sasl.password = None;
        c.sasl.password_file = Some(file);
        c.validate().expect("valid");
        assert_eq!(
            get(&c.security_properties().expect("props"), "sasl.password").as_deref(),
            Some("from-file"),
            "one trailing newline dropped"
        );
        c.sasl.password_file = Some(dir.join("missing"));
        let e = c.client_config().expect_err("missing file");
        assert!(e.starts_with("kafka.sasl.password_file: cannot read "), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn security_settings_are_checked_and_name_their_key() {
        let bad = |f: &dyn Fn(&mut KafkaSourceConfig)| {
            let mut c = KafkaSourceConfig::default();
            f(&mut c);
            c.validate().expect_err("must be rejected")
        };
        let starts = |e: String, key: &str| assert!(e.starts_with(key), "expected {key}: {e}");
        starts(bad(&|c| c.sasl.username = Some("u".into())), "kafka.sasl.mechanism");
        starts(
            bad(&|c| {
                c.sasl = sasl(SaslMechanism::Plain);
                c.sasl.username = None;
            }),
            "kafka.sasl.username",
        );
        starts(
            bad(&|c| {
                c.sasl = sasl(SaslMechanism::Plain);
                c.sasl.password = None;
            }),
            "kafka.sasl.password",
        );
        starts(
            bad(&|c| {
                c.sasl = sasl(SaslMechanism::Plain);
                c.sasl.password_file = Some("/run/secrets/kafka".into());
            }),
            "kafka.sasl.password_file",
        );
        starts(bad(&|c| c.tls.ca_file = Some("/ca.pem".into())), "kafka.tls.ca_file");
        starts(
            bad(&|c| {
                c.tls = tls_on();
                c.properties.insert("security.protocol".into(), "plaintext".into());
            }),
            "kafka.properties.security.protocol",
        );
        // Without kafka.tls / kafka.sasl, properties may still carry security settings.
        let mut c = KafkaSourceConfig::default();
        c.properties.insert("security.protocol".into(), "ssl".into());
        c.validate().expect("properties alone");
    }

    #[test]
    fn the_prefetch_is_sized_from_the_batch_and_properties_override_it() {
        let c = KafkaSourceConfig::default();
        let consumer = c.client_config_for(1000).expect("config");
        assert_eq!(consumer.get("queued.max.messages.kbytes"), Some("4000"));
        assert_eq!(consumer.get("queued.min.messages"), Some("2000"));
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("10"), "no second-long wait once it drained");
        assert_eq!(c.client_config_for(10).expect("config").get("queued.max.messages.kbytes"), Some("1024"));
        assert_eq!(
            c.client_config_for(1 << 20).expect("config").get("queued.max.messages.kbytes"),
            Some("65536")
        );
        let mut c = KafkaSourceConfig::default();
        c.properties.insert("queued.max.messages.kbytes".into(), "777".into());
        assert_eq!(c.client_config_for(1000).expect("config").get("queued.max.messages.kbytes"), Some("777"));
    }

    #[test]
    fn secret_properties_are_hidden() {
        let mut c = KafkaSourceConfig::default();
        c.properties.insert("sasl.oauthbearer.client.secret".into(), "t0p".into());
        c.properties.insert("ssl.key.password".into(), "k3y".into());
        c.properties.insert("fetch.max.bytes".into(), "1048576".into());
        let text = format!("{c:?}\n{}", serde_json::to_string(&c).expect("json"));
        assert!(!text.contains("t0p") && !text.contains("k3y"), "{text}");
        assert!(text.contains("1048576"), "{text}");
        assert_eq!(
            c.client_config().expect("config").get("ssl.key.password"),
            Some("k3y"),
            "the client gets it"
        );
    }

    #[test]
    fn the_guarantee_settings_are_fixed() {
        let c = KafkaSourceConfig::default().client_config().expect("config");
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
    }
}
