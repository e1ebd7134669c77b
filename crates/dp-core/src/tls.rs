//! TLS settings shared by the connections to MySQL, Redis and Kafka (`[mysql.tls]`,
//! `[redis.tls]`, `[kafka.tls]`), as plain data: each backend crate turns them into its
//! client's configuration.
//!
//! When TLS is on the server's certificate is verified by default — it must chain to a trusted
//! CA and name the host connected to — so turning TLS on never silently trusts anyone.
//! `ca_file` replaces the built-in trust anchors with a CA of one's own (a private PKI);
//! `cert_file` and `key_file` add a client certificate for servers that require one. Files
//! are read once, when the client is built: a rotated certificate takes effect on the next
//! start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// TLS to one server (`[<service>.tls]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Connect over TLS.
    pub enabled: bool,
    /// PEM file of the CA certificate(s) to trust instead of the built-in ones.
    pub ca_file: Option<PathBuf>,
    /// PEM file of a client certificate (chain) to present; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// How much of the server's certificate is checked; `full` unless lowered.
    pub verify: TlsVerify,
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsVerify {
    /// It chains to a trusted CA, is within its validity period, and names the host connected
    /// to (MySQL's `VERIFY_IDENTITY`).
    #[default]
    Full,
    /// It chains to a trusted CA and is within its validity period; any host name is accepted
    /// (MySQL's `VERIFY_CA`), for servers reached by an address their certificate does not name.
    Ca,
    /// Not checked at all: encrypted, but open to anyone in the middle (MySQL's `REQUIRED`).
    None,
}

/// The PEM contents of a [`TlsConfig`]'s files, read and checked.
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// The CA certificates, when `ca_file` is set.
    pub ca: Option<Vec<u8>>,
    /// The client certificate chain and its key, when `cert_file` and `key_file` are set.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key's bytes.
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("client", &self.client.is_some())
            .finish()
    }
}

impl TlsConfig {
    /// Checks the settings without reading the files. `at` is the section (`mysql.tls`);
    /// `on` whether TLS is on (for Redis a `rediss://` URL turns it on too). Errors name the key.
    pub fn validate(&self, at: &str, on: bool) -> Result<(), String> {
        for (key, path) in
            [("ca_file", &self.ca_file), ("cert_file", &self.cert_file), ("key_file", &self.key_file)]
        {
            if path.as_deref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(format!("{at}.{key}: must not be empty; remove it, or give a PEM file"));
            }
            if path.is_some() && !on {
                return Err(format!("{at}.{key}: is set but TLS is off; set {at}.enabled = true"));
            }
        }
        if self.verify != TlsVerify::Full && !on {
            return Err(format!("{at}.verify: is set but TLS is off; set {at}.enabled = true"));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                Err(format!("{at}.key_file: required with {at}.cert_file (the client certificate's key)"))
            }
            (None, Some(_)) => {
                Err(format!("{at}.cert_file: required with {at}.key_file (the key's certificate)"))
            }
            _ => Ok(()),
        }
    }

    /// Reads the files and checks each holds what it should, in PEM. Errors name the key and
    /// the file, never a key's content.
    pub fn read_files(&self, at: &str) -> Result<TlsFiles, String> {
        let ca = match &self.ca_file {
            Some(p) => Some(read_pem(&format!("{at}.ca_file"), p, "CERTIFICATE", "a CA certificate")?),
            None => None,
        };
        let client = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some((
                read_pem(&format!("{at}.cert_file"), cert, "CERTIFICATE", "a certificate")?,
                read_pem(&format!("{at}.key_file"), key, "PRIVATE KEY", "a private key")?,
            )),
            _ => None,
        };
        Ok(TlsFiles { ca, client })
    }
}

fn read_pem(key: &str, path: &Path, label: &str, what: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    // `-----BEGIN CERTIFICATE-----`, `-----BEGIN EC PRIVATE KEY-----`, …
    let text = String::from_utf8_lossy(&bytes);
    let found = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .any(|l| l.ends_with(label));
    if !found {
        return Err(format!("{key}: {} holds no PEM {what} (-----BEGIN {label}-----)", path.display()));
    }
    Ok(bytes)
}

/// A plain-words reading of a TLS handshake failure reported by rustls or OpenSSL, for the
/// error message: what is wrong with the certificate and which setting to look at. `at` is the
/// section (`mysql.tls`).
pub fn explain_tls_error(message: &str, at: &str) -> Option<String> {
    let m = message.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| m.contains(w));
    let text = if has(&["expired", "not valid yet", "notvalidyet", "not yet valid"]) {
        "the server's TLS certificate has expired or is not valid yet; renew it (or check this machine's clock)".to_owned()
    } else if has(&["not valid for name", "notvalidforname", "hostname mismatch", "ip address mismatch"]) {
        // MySQL's client always checks the name (see dp-sink-mysql's validation).
        let or_lower =
            if at.starts_with("mysql") { String::new() } else { format!(", or set {at}.verify = \"ca\"") };
        format!(
            "the server's TLS certificate does not name the host connected to; connect by a name it holds{or_lower}"
        )
    } else if has(&["could not be verified"]) {
        // librdkafka's words for every verification failure: OpenSSL's reason is not kept.
        format!(
            "the server's TLS certificate could not be verified: it is not signed by a CA in {at}.ca_file (or the system's roots when that is unset), has expired, or does not name the host"
        )
    } else if has(&[
        "unknownissuer",
        "unable to get local issuer",
        "self-signed certificate",
        "self signed certificate",
        "badsignature",
        "certificate verify failed",
        "invalid peer certificate",
    ]) {
        format!(
            "the server's TLS certificate is not trusted: it is not signed by a CA in {at}.ca_file (or among the built-in roots when that is unset)"
        )
    } else if has(&[
        "certificate required",
        "certificaterequired",
        "bad certificate",
        "unknown ca",
        "unknownca",
        "handshake failure",
    ]) {
        format!(
            "the server refused the TLS handshake; it may require a client certificate it trusts ({at}.cert_file and {at}.key_file)"
        )
    } else if has(&[
        "corrupt message",
        "invalidcontenttype",
        "wrong version number",
        "packet length too long",
        "record overflow",
    ]) {
        format!("the server does not speak TLS there; is TLS on at that port? (or set {at}.enabled = false)")
    } else {
        return None;
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> TlsConfig {
        TlsConfig { enabled: true, ..TlsConfig::default() }
    }

    #[test]
    fn validation_names_the_key() {
        TlsConfig::default().validate("mysql.tls", false).expect("off by default");
        on().validate("mysql.tls", true).expect("on without files: built-in roots, full verification");
        let c = TlsConfig { ca_file: Some("ca.pem".into()), ..TlsConfig::default() };
        let e = c.validate("mysql.tls", false).expect_err("a CA while off");
        assert!(e.starts_with("mysql.tls.ca_file: ") && e.contains("mysql.tls.enabled = true"), "{e}");
        let c = TlsConfig { cert_file: Some("c.pem".into()), ..on() };
        assert!(c.validate("redis.tls", true).expect_err("no key").starts_with("redis.tls.key_file: "));
        let c = TlsConfig { key_file: Some("k.pem".into()), ..on() };
        assert!(c.validate("redis.tls", true).expect_err("no cert").starts_with("redis.tls.cert_file: "));
        let c = TlsConfig { ca_file: Some(PathBuf::new()), ..on() };
        assert!(
            c.validate("kafka.tls", true)
                .expect_err("empty")
                .starts_with("kafka.tls.ca_file: must not be empty")
        );
        let c = TlsConfig { verify: TlsVerify::None, ..TlsConfig::default() };
        assert!(
            c.validate("kafka.tls", false).expect_err("verify while off").starts_with("kafka.tls.verify: ")
        );
    }

    #[test]
    fn files_must_hold_pem_of_the_right_kind() {
        let dir = std::env::temp_dir().join(format!("dp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
            .expect("write");
        std::fs::write(&key, "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n")
            .expect("write");
        let c = TlsConfig {
            ca_file: Some(cert.clone()),
            cert_file: Some(cert.clone()),
            key_file: Some(key.clone()),
            ..on()
        };
        let files = c.read_files("mysql.tls").expect("reads");
        assert!(files.ca.is_some() && files.client.is_some());
        assert!(!format!("{files:?}").contains("MHc"), "key bytes in Debug");
        let swapped = TlsConfig { ca_file: Some(key.clone()), ..on() };
        let e = swapped.read_files("mysql.tls").expect_err("a key is no CA");
        assert!(e.starts_with("mysql.tls.ca_file: ") && e.contains("holds no PEM"), "{e}");
        assert!(!e.contains("MHc"), "key content quoted: {e}");
        let missing = TlsConfig { ca_file: Some(dir.join("nope.pem")), ..on() };
        assert!(
            missing
                .read_files("redis.tls")
                .expect_err("missing")
                .starts_with("redis.tls.ca_file: cannot read ")
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn handshake_failures_are_explained() {
        let untrusted =
            explain_tls_error("invalid peer certificate: UnknownIssuer", "redis.tls").expect("known");
        assert!(untrusted.contains("not trusted") && untrusted.contains("redis.tls.ca_file"), "{untrusted}");
        let expired = explain_tls_error(
            "invalid peer certificate: certificate expired: verification time 1 (UNIX), but certificate is not valid after 0",
            "mysql.tls",
        )
        .expect("known");
        assert!(expired.contains("expired"), "{expired}");
        let openssl = explain_tls_error(
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: unable to get local issuer certificate",
            "kafka.tls",
        )
        .expect("known");
        assert!(openssl.contains("not trusted"), "{openssl}");
        let librdkafka = explain_tls_error(
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured",
            "kafka.tls",
        )
        .expect("known");
        assert!(librdkafka.contains("kafka.tls.ca_file") && librdkafka.contains("expired"), "{librdkafka}");
        let name =
            explain_tls_error("invalid peer certificate: NotValidForName", "redis.tls").expect("known");
        assert!(name.contains("redis.tls.verify = \"ca\""), "{name}");
        let name = explain_tls_error("certificate not valid for name \"db\"", "mysql.tls").expect("known");
        assert!(name.contains("does not name the host") && !name.contains("verify"), "{name}");
        assert_eq!(explain_tls_error("connection refused", "mysql.tls"), None);
    }
}
