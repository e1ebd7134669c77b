//! The security side of the Redis connection: the rustls client configuration of
//! `[redis.tls]`, and connection errors that say what to check.

use dp_core::TlsConfig;
use fred::types::config::TlsConnector;

use crate::RedisBufferError;

/// A failed connection, with a hint: a TLS failure explained, or whether Redis runs there.
pub(crate) fn connect_error(url: String, source: fred::error::Error) -> RedisBufferError {
    let hint = dp_core::explain_tls_error(&source.to_string(), "redis.tls")
        .unwrap_or_else(|| "is Redis running there?".to_owned());
    RedisBufferError::Connect { url, source, hint }
}

/// The connector of `[redis.tls]`; see [`dp_core::rustls_client_config`].
pub(crate) fn connector(tls: &TlsConfig) -> Result<TlsConnector, RedisBufferError> {
    dp_core::rustls_client_config(tls, "redis.tls").map(Into::into).map_err(RedisBufferError::Setting)
}

#[cfg(test)]
mod tests {
    use dp_core::{SecretUrl, TlsConfig};

    use crate::RedisBufferConfig;

    #[test]
    fn tls_and_password_file_settings_name_their_key() {
        let bad = |f: &dyn Fn(&mut RedisBufferConfig)| {
            let mut c = RedisBufferConfig::default();
            f(&mut c);
            c.validate().expect_err("must be rejected")
        };
        let c = RedisBufferConfig { url: SecretUrl::new("rediss://:pw@cache:6380/0"), ..Default::default() };
        c.validate().expect("rediss:// is TLS");
        assert!(c.tls_on());
        assert!(!RedisBufferConfig::default().tls_on());
        let e = bad(&|c| c.tls.ca_file = Some("/ca.pem".into()));
        assert!(e.starts_with("redis.tls.ca_file") && e.contains("redis.tls.enabled"), "{e}");
        let e = bad(&|c| {
            c.url = SecretUrl::new("redis://u:pw@cache:6379");
            c.password_file = Some("/run/secrets/redis".into());
        });
        assert!(e.starts_with("redis.password_file") && !e.contains(":pw@"), "{e}");
        let ok = RedisBufferConfig {
            url: SecretUrl::new("rediss://cache:6380"),
            tls: TlsConfig { ca_file: Some("/ca.pem".into()), ..TlsConfig::default() },
            ..Default::default()
        };
        ok.validate().expect("a CA with a rediss:// URL");
    }

    #[test]
    fn the_password_file_and_tls_reach_the_client_configuration() {
        let dir = std::env::temp_dir().join(format!("dp-redis-security-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let pw = dir.join("pw");
        std::fs::write(&pw, "s3cr3t\n").expect("write");
        let c = RedisBufferConfig {
            url: SecretUrl::new("rediss://app@cache:6380"),
            password_file: Some(pw),
            ..Default::default()
        };
        let mut cfg = fred::prelude::Config::from_url(c.url.expose()).expect("url");
        c.apply_security(&mut cfg).expect("applies");
        assert_eq!(cfg.password.as_deref(), Some("s3cr3t"));
        assert_eq!(cfg.username.as_deref(), Some("app"));
        assert!(cfg.tls.is_some(), "rediss:// turns TLS on, with the built-in roots");
        let mut plain = fred::prelude::Config::from_url("redis://cache:6379").expect("url");
        RedisBufferConfig::default().apply_security(&mut plain).expect("applies");
        assert!(plain.tls.is_none() && plain.password.is_none());
        let mut broken = c.clone();
        broken.tls.ca_file = Some(dir.join("missing.pem"));
        let e = broken.apply_security(&mut cfg).expect_err("missing CA").to_string();
        assert!(e.starts_with("redis.tls.ca_file: cannot read "), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
