//! A rustls client configuration from a [`TlsConfig`] (feature `rustls`): the Redis buffer's
//! and the Schema Registry client's TLS, on ring as everywhere in this workspace.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{TlsConfig, TlsVerify};

/// The client configuration of `tls`: `ca_file` or the built-in Mozilla roots, an optional
/// client certificate, and the verification `verify` asks for. `at` is the section
/// (`redis.tls`); errors name its key, never a key's content.
pub fn rustls_client_config(tls: &TlsConfig, at: &str) -> Result<rustls::ClientConfig, String> {
    let setting = |key: &str, e: &dyn std::fmt::Display| format!("{at}.{key}: {e}");
    let files = tls.read_files(at)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match &files.ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| setting("ca_file", &e))?;
                roots.add(cert).map_err(|e| setting("ca_file", &e))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| setting("enabled", &e))?;
    let builder = match tls.verify {
        TlsVerify::Full => builder.with_root_certificates(roots),
        verify => {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| setting("ca_file", &e))?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Lowered { verify, inner }))
        }
    };
    match &files.client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| setting("cert_file", &e))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| setting("key_file", &e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| setting("key_file", &e))
        }
        None => Ok(builder.with_no_client_auth()),
    }
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
