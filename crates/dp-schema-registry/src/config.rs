//! `[schema_registry]`: where the registry is and how to authenticate; and [`Format`], how a
//! topic's values or keys are encoded.

use std::path::PathBuf;
use std::time::Duration;

use dp_core::{Secret, TlsConfig};
use serde::{Deserialize, Serialize};

/// How a topic's values (`format`) or keys (`key_format`) are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Plain JSON text (or, for keys, plain text): read as is.
    #[default]
    Json,
    /// Confluent-framed Avro: magic byte 0, a 4-byte schema id, the binary datum.
    Avro,
    /// Confluent-framed Protobuf: magic byte 0, a 4-byte schema id, the message indexes, the
    /// message.
    Protobuf,
    /// Confluent-framed JSON Schema: magic byte 0, a 4-byte schema id, JSON text.
    JsonSchema,
}

impl Format {
    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Avro => "avro",
            Self::Protobuf => "protobuf",
            Self::JsonSchema => "json_schema",
        }
    }

    /// True for the formats read through a Schema Registry.
    pub fn needs_registry(self) -> bool {
        self != Self::Json
    }
}

/// Settings of the Schema Registry client (`[schema_registry]`, `DP_SCHEMA_REGISTRY__*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistryConfig {
    /// The registry's base URL(s), `http://` or `https://`; a list (or one comma-separated
    /// string) is tried in order, moving on when one cannot be reached.
    #[serde(deserialize_with = "dp_core::string_or_list")]
    pub url: Vec<String>,
    /// HTTP basic authentication: the user name (Confluent Cloud's API key).
    pub username: Option<String>,
    /// The basic-authentication password (API secret), read from this file at startup.
    pub password_file: Option<PathBuf>,
    /// A bearer token, read from this file at startup (instead of basic authentication).
    pub bearer_token_file: Option<PathBuf>,
    /// The longest one request may take, connecting included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// TLS to the registry (`[schema_registry.tls]`): `https://` URLs verify the server's
    /// certificate against `ca_file` or the built-in roots; a client certificate is optional.
    pub tls: TlsConfig,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        Self {
            url: Vec::new(),
            username: None,
            password_file: None,
            bearer_token_file: None,
            request_timeout: Duration::from_secs(10),
            tls: TlsConfig::default(),
        }
    }
}

/// How requests authenticate, read from the configured files.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    None,
    Basic { username: String, password: Secret },
    Bearer(Secret),
}

impl SchemaRegistryConfig {
    /// True when a registry is configured.
    pub fn is_set(&self) -> bool {
        !self.url.is_empty()
    }

    /// Checks the settings without reading the files; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        let https = self.url.iter().any(|u| u.starts_with("https://"));
        for u in &self.url {
            let Some(rest) = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://")) else {
                return Err(format!(
                    "schema_registry.url: `{}` is not an http:// or https:// URL",
                    dp_core::redact_url(u)
                ));
            };
            if rest.split('/').next().is_none_or(|host| host.is_empty() || host.contains('@')) {
                return Err(format!(
                    "schema_registry.url: `{}` has no host, or carries credentials; use username and password_file",
                    dp_core::redact_url(u)
                ));
            }
            u.parse::<http::Uri>()
                .map_err(|e| format!("schema_registry.url: `{}`: {e}", dp_core::redact_url(u)))?;
        }
        if self.password_file.is_some() && self.username.is_none() {
            return Err("schema_registry.password_file: needs schema_registry.username".to_owned());
        }
        if self.username.is_some() && self.password_file.is_none() {
            return Err("schema_registry.username: needs schema_registry.password_file".to_owned());
        }
        if self.bearer_token_file.is_some() && self.username.is_some() {
            return Err(
                "schema_registry.bearer_token_file: set either it or username and password_file, not both"
                    .to_owned(),
            );
        }
        if self.request_timeout.is_zero() {
            return Err("schema_registry.request_timeout: must be more than 0".to_owned());
        }
        if self.tls.enabled && !https {
            return Err("schema_registry.tls.enabled: the URLs are http://; use https:// URLs".to_owned());
        }
        self.tls.validate("schema_registry.tls", self.tls.enabled || https)
    }

    pub(crate) fn auth(&self) -> Result<Auth, String> {
        Ok(match (&self.username, &self.password_file, &self.bearer_token_file) {
            (Some(user), Some(pw), _) => Auth::Basic {
                username: user.clone(),
                password: dp_core::read_secret_file("schema_registry.password_file", pw)?,
            },
            (_, _, Some(token)) => {
                Auth::Bearer(dp_core::read_secret_file("schema_registry.bearer_token_file", token)?)
            }
            _ => Auth::None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut SchemaRegistryConfig)) -> Result<(), String> {
        let mut c = SchemaRegistryConfig { url: vec!["http://registry:8081".into()], ..Default::default() };
        f(&mut c);
        c.validate()
    }

    #[test]
    fn settings_are_checked_and_errors_name_the_key() {
        with(|_| {}).expect("a plain URL");
        with(|c| c.url = vec!["https://a:8081".into(), "https://b:8081/base".into()]).expect("two");
        let e = with(|c| c.url = vec!["registry:8081".into()]).expect_err("no scheme");
        assert!(e.starts_with("schema_registry.url: `registry:8081` is not"), "{e}");
        let e = with(|c| c.url = vec!["http://u:secret@registry".into()]).expect_err("credentials");
        assert!(e.contains("carries credentials") && !e.contains("secret"), "{e}");
        let e = with(|c| c.username = Some("key".into())).expect_err("no password");
        assert!(e.starts_with("schema_registry.username"), "{e}");
        let e = with(|c| {
            c.username = Some("key".into());
            c.password_file = Some("/p".into());
            c.bearer_token_file = Some("/t".into());
        })
        .expect_err("both");
        assert!(e.starts_with("schema_registry.bearer_token_file"), "{e}");
        let e = with(|c| c.tls.enabled = true).expect_err("tls on http");
        assert!(e.starts_with("schema_registry.tls.enabled"), "{e}");
        let e = with(|c| c.request_timeout = Duration::ZERO).expect_err("zero");
        assert!(e.starts_with("schema_registry.request_timeout"), "{e}");
    }

    #[test]
    fn formats_are_spelled_as_in_the_config() {
        #[derive(Deserialize)]
        struct S {
            f: Format,
        }
        let s: S = toml::from_str(r#"f = "json_schema""#).expect("parses");
        assert_eq!(s.f, Format::JsonSchema);
        assert!(toml::from_str::<S>(r#"f = "xml""#).is_err());
        assert_eq!(Format::Protobuf.as_str(), "protobuf");
    }
}
