//! The security side of the Redis connection: the rustls client configuration of
//! `[redis.tls]`, and connection errors that say what to check.

use std::sync::Arc;

use dp_core::{TlsConfig, TlsVerify};
use fred::types::config::TlsConnector;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::RedisBufferError;

/// A failed connection, with a hint: a TLS failure explained, or whether Redis runs there.
pub(crate) fn connect_error(url: String, source: fred::error::Error) -> RedisBufferError {
    let hint = dp_core::explain_tls_error(&source.to_string(), "redis.tls")
        .unwrap_or_else(|| "is Redis running there?".to_owned());
    RedisBufferError::Connect { url, source, hint }
}

fn setting(key: &str, e: impl std::fmt::Display) -> RedisBufferError {
    RedisBufferError::Setting(format!("redis.tls.{key}: {e}"))
}

/// The connector: `ca_file` or the built-in Mozilla roots, an optional client certificate,
/// and the verification `verify` asks for. ring, as everywhere in this workspace.
pub(crate) fn connector(tls: &TlsConfig) -> Result<TlsConnector, RedisBufferError> {
    let files = tls.read_files("redis.tls").map_err(RedisBufferError::Setting)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match &files.ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| setting("ca_file", e))?;
                roots.add(cert).map_err(|e| setting("ca_file", e))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| setting("enabled", e))?;
    let builder = match tls.verify {
        TlsVerify::Full => builder.with_root_certificates(roots),
        verify => {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| setting("ca_file", e))?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Lowered { verify, inner }))
        }
    };
    let config = match &files.client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| setting("cert_file", e))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| setting("key_file", e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| setting("key_file", e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config.into())
}

/// `verify = "ca"`: the chain is checked but any host name accepted; `verify = "none"`:
/// nothing is checked but the handshake's signatures.
#[derive(Debug)]
struct Lowered {
    verify: TlsVerify,
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for Lowered {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.verify == TlsVerify::None {
            return Ok(ServerCertVerified::assertion());
        }
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
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
