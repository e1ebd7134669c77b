//! Loading the configuration: built-in defaults, then a TOML file, then `DP_` environment
//! variables (`__` separates nesting: `DP_KAFKA__BROKERS` sets `kafka.brokers`).

use std::path::{Path, PathBuf};

use dp_assembly::Config;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The settings file's shape: the pipeline's [`Config`] and the binary's own `[log]` and
/// `[http]`. Read by [`load`], which takes each part from the file and the environment so that
/// an error names its key; written (as TOML) by [`to_toml`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct Settings {
    /// What the pipeline runs on: every section but `[log]` and `[http]`.
    #[serde(flatten)]
    pub pipeline: Config,
    /// Logging.
    pub log: LogConfig,
    /// The health and metrics endpoint.
    pub http: HttpConfig,
}

/// The binary's HTTP endpoint (`[http]`, `DP_HTTP__*`): `/livez`, `/readyz`, `/metrics`, and
/// `POST /admin/pause` and `/admin/resume` when a token is configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve the endpoint at all.
    pub enabled: bool,
    /// `host:port` to listen on; port 0 picks a free one (logged at startup).
    pub address: String,
    /// A file holding the bearer token of the admin endpoints (a mounted Secret). Unset: the
    /// admin endpoints are off.
    pub admin_token_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { enabled: true, address: "0.0.0.0:9000".into(), admin_token_file: None }
    }
}

impl HttpConfig {
    /// The admin token, read from `admin_token_file`: at least 16 characters, no whitespace.
    /// `None` when the admin endpoints are off.
    pub fn admin_token(&self) -> Result<Option<dp_core::Secret>, String> {
        let Some(path) = self.admin_token_file.as_deref() else { return Ok(None) };
        if !self.enabled {
            return Err("http.admin_token_file: set, but http.enabled = false serves no endpoint".into());
        }
        let token = dp_core::read_secret_file("http.admin_token_file", path)?;
        let text = token.expose();
        if text.chars().count() < 16 || text.chars().any(char::is_whitespace) {
            return Err(format!(
                "http.admin_token_file: the token in {} must be at least 16 characters without whitespace (e.g. `openssl rand -hex 24`)",
                path.display()
            ));
        }
        Ok(Some(token))
    }
}

/// How the binary logs (`[log]`, `DP_LOG__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (human-readable) or `json` (one object per line).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,dp_pipeline=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Loads settings from defaults, `file` (if given) and the `DP_` variables in `env`; fills in
/// the instance id from the host name when unset; validates. The error is one line naming the
/// key.
pub fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Settings, String> {
    let mut fig = Figment::from(Serialized::defaults(Settings::default()));
    if let Some(f) = file {
        if !f.is_file() {
            return Err(format!("--config: file {} does not exist", f.display()));
        }
        fig = fig.merge(Toml::file_exact(f));
    }
    // The same rules as figment's `Env::prefixed("DP_").split("__")`, over the variables passed
    // in rather than the process environment, so callers (and tests) control the input.
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("DP_") else { continue };
        let path = rest.to_ascii_lowercase().replace("__", ".");
        // librdkafka settings are dotted names; in a variable name `_` stands for `.`:
        // DP_KAFKA__PROPERTIES__PARTITION_ASSIGNMENT_STRATEGY sets "partition.assignment.strategy".
        if let Some(property) = path.strip_prefix("kafka.properties.") {
            let mut map = std::collections::BTreeMap::new();
            map.insert(property.replace(['_', '.'], "."), value.clone());
            fig = fig.merge(Serialized::default("kafka.properties", map));
            continue;
        }
        // A secret stays the text it is: `007` or `true` must not become a number or a boolean.
        let value: figment::value::Value =
            if dp_core::is_secret_name(path.rsplit('.').next().unwrap_or_default()) {
                value.clone().into()
            } else {
                value.parse().unwrap_or_else(|never: std::convert::Infallible| match never {})
            };
        fig = fig.merge(Serialized::default(&path, value));
    }
    refuse_unknown_top_level_keys(&fig, file, env)?;
    let extract_error = |e: figment::Error| first_error(&e, file, env);
    let mut settings = Settings {
        pipeline: fig.extract().map_err(extract_error)?,
        log: fig.extract_inner("log").map_err(extract_error)?,
        http: fig.extract_inner("http").map_err(extract_error)?,
    };
    if settings.pipeline.instance_id.is_empty() {
        settings.pipeline.instance_id = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .ok_or("instance_id: unset and the host name is not readable; set DP_INSTANCE_ID")?;
    }
    settings.pipeline.validate().map_err(|e| e.to_string())?;
    if settings.http.enabled && settings.http.address.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!(
            "http.address: `{}` is not an IP address and port such as 0.0.0.0:9000",
            settings.http.address
        ));
    }
    settings.http.admin_token()?;
    Ok(settings)
}

/// Every section refuses keys it does not know; the top level, which `[log]` and `[http]`
/// share with the pipeline's [`Config`] (which leaves keys it does not know to its host), is
/// checked here against the keys the defaults have.
fn refuse_unknown_top_level_keys(
    fig: &Figment,
    file: Option<&Path>,
    env: &[(String, String)],
) -> Result<(), String> {
    let known: Vec<&str> = Config::KEYS.iter().copied().chain(["log", "http"]).collect();
    let given: figment::value::Dict = fig.extract().map_err(|e| first_error(&e, file, env))?;
    match given.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(key) => {
            let variable = format!("DP_{}", key.to_ascii_uppercase());
            let origin = if env.iter().any(|(name, _)| name.starts_with(&variable)) {
                format!(" (from {variable})")
            } else if let Some(f) = file {
                format!(" (in {})", f.display())
            } else {
                String::new()
            };
            Err(format!("{key}: unknown field{origin}; expected one of {known:?}"))
        }
    }
}

/// One line: the key, what is wrong, and where the value came from (the variable or the file;
/// figment would name the line of this function that merged it).
fn first_error(e: &figment::Error, file: Option<&Path>, env: &[(String, String)]) -> String {
    let e = e.clone().into_iter().next().unwrap_or_else(|| e.clone());
    let key = e.path.join(".");
    let variable = format!("DP_{}", key.to_ascii_uppercase().replace('.', "__"));
    let origin = if env.iter().any(|(name, _)| *name == variable) {
        format!(" (from {variable})")
    } else if let Some(f) = file {
        format!(" (in {})", f.display())
    } else {
        String::new()
    };
    if key.is_empty() { format!("{}{origin}", e.kind) } else { format!("{key}: {}{origin}", e.kind) }
}

/// The effective settings as TOML, passwords redacted.
pub fn to_toml(settings: &Settings) -> String {
    toml::to_string_pretty(settings).unwrap_or_else(|e| format!("# cannot render settings: {e}"))
}

/// The `DP_` variables that carry `settings`' secrets, which [`to_toml`] redacts: for a child
/// process given the TOML as its settings file. Secrets read from files are not among them
/// (the file's path is in the TOML).
pub fn secret_variables(settings: &Config) -> Vec<(String, String)> {
    let mut out = vec![
        ("DP_MYSQL__URL".to_owned(), settings.mysql.url.expose().to_owned()),
        ("DP_REDIS__URL".to_owned(), settings.redis.url.expose().to_owned()),
    ];
    if let Some(p) = &settings.kafka.sasl.password {
        out.push(("DP_KAFKA__SASL__PASSWORD".to_owned(), p.expose().to_owned()));
    }
    for (name, value) in settings.kafka.properties.iter().filter(|(k, _)| dp_core::is_secret_name(k)) {
        let variable = format!("DP_KAFKA__PROPERTIES__{}", name.to_ascii_uppercase().replace('.', "_"));
        out.push((variable, value.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        v.push(("DP_INSTANCE_ID".into(), "test-0".into()));
        v
    }

    #[test]
    fn defaults_then_file_then_environment() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(f, "[kafka]\nbrokers = \"file:9092\"\ngroup_id = \"from-file\"\n[buffer]\nmax_rows = 10")
            .expect("write");
        let s = load(Some(f.path()), &env(&[("DP_KAFKA__BROKERS", "env:9092"), ("DP_KAFKA__TOPICS", "a,b")]))
            .expect("loads");
        let c = &s.pipeline;
        assert_eq!(c.kafka.brokers, "env:9092", "environment wins over the file");
        assert_eq!(c.kafka.group_id, "from-file", "the file wins over defaults");
        assert_eq!(c.kafka.topics, vec!["a", "b"]);
        assert_eq!(c.buffer.max_rows, 10);
        assert_eq!(c.buffer.flush_interval, std::time::Duration::from_secs(30));
        assert_eq!(c.instance_id, "test-0");
    }

    #[test]
    fn librdkafka_properties_from_the_environment() {
        let s = load(
            None,
            &env(&[
                ("DP_KAFKA__PROPERTIES__PARTITION_ASSIGNMENT_STRATEGY", "cooperative-sticky"),
                ("DP_KAFKA__PROPERTIES__FETCH_MAX_BYTES", "1048576"),
            ]),
        )
        .expect("loads");
        assert_eq!(
            s.pipeline.kafka.properties.get("partition.assignment.strategy").map(String::as_str),
            Some("cooperative-sticky")
        );
        assert_eq!(s.pipeline.kafka.properties.get("fetch.max.bytes").map(String::as_str), Some("1048576"));
    }

    #[test]
    fn durations_and_sizes_from_the_environment() {
        let s = load(None, &env(&[("DP_BUFFER__FLUSH_INTERVAL", "500ms"), ("DP_BUFFER__MAX_ROWS", "250")]))
            .expect("loads");
        assert_eq!(s.pipeline.buffer.flush_interval, std::time::Duration::from_millis(500));
        assert_eq!(s.pipeline.buffer.max_rows, 250);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = load(None, &env(&[("DP_KAFKA__BOGUS", "1")])).expect_err("unknown key");
        assert!(e.contains("bogus"), "{e}");
        let e = load(None, &env(&[("DP_BUFFER__FLUSH_INTERVAL", "soon")])).expect_err("bad duration");
        assert!(e.starts_with("buffer.flush_interval"), "{e}");
        let e = load(None, &env(&[("DP_BUFFER__FLUSH_INTERVAL", "0s")])).expect_err("zero interval");
        assert!(e.starts_with("buffer.flush_interval"), "{e}");
        let e = load(None, &env(&[("DP_BUFFER__MAX_ROWS", "-5")])).expect_err("negative");
        assert!(e.starts_with("buffer.max_rows"), "{e}");
        let e = load(None, &env(&[("DP_MYSQL__TABLE", "t`; DROP TABLE x")])).expect_err("bad table");
        assert!(e.starts_with("mysql.table"), "{e}");
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(f, "[mysql]\nurll = \"x\"").expect("write");
        let e = load(Some(f.path()), &env(&[])).expect_err("typo in file");
        assert!(e.contains("urll"), "{e}");
    }

    #[test]
    fn the_example_file_loads_and_matches_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../config/delivery-pipeline.example.toml");
        let s = load(Some(&path), &env(&[])).expect("the shipped example loads");
        let d = load(None, &env(&[])).expect("defaults load");
        assert_eq!(to_toml(&s), to_toml(&d), "the example documents the defaults");
    }

    #[test]
    fn tls_and_sasl_from_the_environment() {
        let s = load(
            None,
            &env(&[
                ("DP_MYSQL__TLS__ENABLED", "true"),
                ("DP_MYSQL__TLS__CA_FILE", "/etc/ssl/private-ca.pem"),
                ("DP_MYSQL__TLS__VERIFY", "none"),
                ("DP_REDIS__URL", "rediss://cache:6380"),
                ("DP_REDIS__PASSWORD_FILE", "/run/secrets/redis"),
                ("DP_KAFKA__TLS__ENABLED", "true"),
                ("DP_KAFKA__SASL__MECHANISM", "SCRAM-SHA-512"),
                ("DP_KAFKA__SASL__USERNAME", "pipeline"),
                ("DP_KAFKA__SASL__PASSWORD", "007"),
            ]),
        )
        .expect("loads");
        assert!(s.pipeline.mysql.tls.enabled);
        assert_eq!(s.pipeline.mysql.tls.verify, dp_core::TlsVerify::None);
        assert_eq!(s.pipeline.mysql.tls.ca_file.as_deref(), Some(Path::new("/etc/ssl/private-ca.pem")));
        assert!(s.pipeline.redis.tls_on());
        assert_eq!(s.pipeline.redis.password_file.as_deref(), Some(Path::new("/run/secrets/redis")));
        assert_eq!(s.pipeline.kafka.sasl.mechanism, Some(dp_source_kafka::SaslMechanism::ScramSha512));
        assert_eq!(
            s.pipeline.kafka.sasl.password.as_ref().map(dp_core::Secret::expose),
            Some("007"),
            "kept as text"
        );
        let e = load(None, &env(&[("DP_MYSQL__TLS__ENABLED", "true"), ("DP_MYSQL__TLS__VERIFY", "ca")]))
            .expect_err("MySQL's client always checks the name");
        assert!(e.starts_with("mysql.tls.verify"), "{e}");
        let e = load(None, &env(&[("DP_KAFKA__SASL__MECHANISM", "GSSAPI")])).expect_err("unknown mechanism");
        assert!(e.starts_with("kafka.sasl.mechanism"), "{e}");
        let e = load(None, &env(&[("DP_MYSQL__TLS__VERIFY", "full")])).map(|_| ()).err();
        assert_eq!(e, None, "the default verification needs no TLS");
        let e = load(None, &env(&[("DP_REDIS__TLS__CERT_FILE", "/c.pem")])).expect_err("cert while off");
        assert!(e.starts_with("redis.tls.cert_file"), "{e}");
    }

    #[test]
    fn printed_settings_hide_every_secret_and_children_get_them() {
        let s = load(
            None,
            &env(&[
                ("DP_MYSQL__URL", "mysql://app:hunter2@db:3306/x"),
                ("DP_REDIS__URL", "redis://:redis-pw@cache:6379"),
                ("DP_KAFKA__SASL__MECHANISM", "PLAIN"),
                ("DP_KAFKA__SASL__USERNAME", "pipeline"),
                ("DP_KAFKA__SASL__PASSWORD", "sasl-pw"),
                ("DP_KAFKA__PROPERTIES__SSL_KEY_PASSWORD", "key-pw"),
            ]),
        )
        .expect("loads");
        let text = format!("{}{s:?}", to_toml(&s));
        for secret in ["hunter2", "redis-pw", "sasl-pw", "key-pw"] {
            assert!(!text.contains(secret), "{secret} printed:\n{text}");
        }
        let mut vars = secret_variables(&s.pipeline);
        vars.push(("DP_KAFKA__SASL__MECHANISM".into(), "PLAIN".into()));
        vars.push(("DP_KAFKA__SASL__USERNAME".into(), "pipeline".into()));
        let child = load(None, &env(&vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>()));
        let child = child.expect("a child loads the secrets back");
        assert_eq!(child.pipeline.kafka.sasl.password.as_ref().map(dp_core::Secret::expose), Some("sasl-pw"));
        assert_eq!(
            child.pipeline.kafka.properties.get("ssl.key.password").map(String::as_str),
            Some("key-pw")
        );
        assert_eq!(child.pipeline.redis.url.expose(), "redis://:redis-pw@cache:6379");
    }

    #[test]
    fn printed_settings_hide_passwords() {
        let s = load(None, &env(&[("DP_MYSQL__URL", "mysql://app:hunter2@db:3306/x")])).expect("loads");
        let text = to_toml(&s);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("mysql://app:***@db:3306/x"), "{text}");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn log_and_http_are_the_binarys_and_unknown_top_level_keys_are_refused() {
        let s = load(None, &env(&[("DP_LOG__FORMAT", "json"), ("DP_HTTP__ADDRESS", "127.0.0.1:0")]))
            .expect("loads");
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.http.address, "127.0.0.1:0");
        let e = load(None, &env(&[("DP_HTTP__ADDRESS", "localhost")])).expect_err("not an address");
        assert!(e.starts_with("http.address"), "{e}");
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(f, "instance_idd = \"x\"").expect("write");
        let e = load(Some(f.path()), &env(&[])).expect_err("typo at the top level");
        assert!(e.starts_with("instance_idd: unknown field"), "{e}");
        let e = load(None, &env(&[("DP_BOGUS", "1")])).expect_err("unknown variable");
        assert!(e.starts_with("bogus: unknown field (from DP_BOGUS)"), "{e}");
    }

    #[test]
    fn the_admin_token_file_must_exist_hold_a_long_token_and_serve_an_endpoint() {
        let token = |text: &str| {
            let mut f = tempfile::NamedTempFile::new().expect("tmp");
            write!(f, "{text}").expect("write");
            f
        };
        let good = token("0123456789abcdef0123\n");
        let path = good.path().to_str().expect("UTF-8").to_owned();
        let s = load(None, &env(&[("DP_HTTP__ADMIN_TOKEN_FILE", &path)])).expect("loads");
        let read = s.http.admin_token().expect("readable").expect("on");
        assert_eq!(read.expose(), "0123456789abcdef0123", "one trailing newline dropped");
        let off = load(None, &env(&[("DP_HTTP__ADMIN_TOKEN_FILE", &path), ("DP_HTTP__ENABLED", "false")]));
        assert!(off.expect_err("no endpoint").starts_with("http.admin_token_file: set, but"));
        for bad in ["short", "0123456789 abcdef0123", "\n\n"] {
            let f = token(bad);
            let e = load(None, &env(&[("DP_HTTP__ADMIN_TOKEN_FILE", f.path().to_str().expect("UTF-8"))]))
                .expect_err(bad);
            assert!(e.starts_with("http.admin_token_file:"), "{bad:?}: {e}");
        }
        let e =
            load(None, &env(&[("DP_HTTP__ADMIN_TOKEN_FILE", "/nonexistent/token")])).expect_err("missing");
        assert!(e.starts_with("http.admin_token_file: cannot read /nonexistent/token"), "{e}");
    }
}
