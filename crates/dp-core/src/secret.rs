//! Credentials kept out of logs, error messages and printed configuration: connection URLs
//! that may carry a password ([`SecretUrl`]), bare secrets such as a SASL password
//! ([`Secret`]), and secrets read from a mounted file ([`read_secret_file`]).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A URL whose password must never be printed. `Debug`, `Display` and `Serialize` show it with
/// the password replaced by `***`; [`SecretUrl::expose`] gives the real one to the client.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for handing to a client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

/// Replaces the password of `scheme://user:password@host…` with `***`, and the value of every
/// query parameter whose name says it is a secret (`password`, `sentinelPassword`, `secret`,
/// `token`, …).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!("{}:***{}", &authority[..colon], &authority[at..]),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    format!("{}{authority}{}", &url[..scheme_end], redact_query(tail))
}

/// `path?query#fragment` with the values of secret-named query parameters replaced.
fn redact_query(tail: &str) -> String {
    let Some(q) = tail.find('?') else { return tail.to_owned() };
    let (path, query) = tail.split_at(q + 1);
    let (query, fragment) = query.split_at(query.find('#').unwrap_or(query.len()));
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, value)) if is_secret_name(name) && !value.is_empty() => format!("{name}=***"),
            _ => param.to_owned(),
        })
        .collect();
    format!("{path}{}{fragment}", params.join("&"))
}

/// Whether a parameter or setting named `name` holds a secret: its name mentions a password,
/// a secret, a token, a credential or private key material.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "credential", "key.pem", "private"].iter().any(|w| n.contains(w))
}

/// A secret that is not a URL, such as a SASL password. `Debug`, `Display` and `Serialize`
/// show `***`; [`Secret::expose`] gives the value to the client library.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for handing to a client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

/// Reads a secret from a file, as Kubernetes mounts a Secret: the whole content, less one
/// trailing newline (`\n` or `\r\n`), which editors and `echo` add. `key` names the setting in
/// the error, which names the file but never quotes its content.
pub fn read_secret_file(key: &str, path: &Path) -> Result<Secret, String> {
    let mut text =
        std::fs::read_to_string(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("{key}: {} is empty", path.display()));
    }
    Ok(Secret(text))
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_everywhere() {
        let u = SecretUrl::new("mysql://app:s3cr3t@db:3306/test?ssl-mode=required");
        assert_eq!(u.redacted(), "mysql://app:***@db:3306/test?ssl-mode=required");
        assert!(!format!("{u:?}").contains("s3cr3t"));
        assert!(!u.to_string().contains("s3cr3t"));
        assert_eq!(u.expose(), "mysql://app:s3cr3t@db:3306/test?ssl-mode=required");
        assert_eq!(redact_url("redis://:pw@127.0.0.1:6379"), "redis://:***@127.0.0.1:6379");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("mysql://root@127.0.0.1/test"), "mysql://root@127.0.0.1/test");
        assert_eq!(redact_url("redis://u:p@ss@h/x"), "redis://u:***@h/x");
    }

    #[test]
    fn secret_query_parameters_are_hidden() {
        assert_eq!(
            redact_url("redis-sentinel://:pw@s1:26379/0?sentinelServiceName=m&sentinelPassword=spw#x"),
            "redis-sentinel://:***@s1:26379/0?sentinelServiceName=m&sentinelPassword=***#x"
        );
        assert_eq!(
            redact_url("mysql://db/x?password=p&require_ssl=true"),
            "mysql://db/x?password=***&require_ssl=true"
        );
        assert_eq!(redact_url("mysql://db/x?require_ssl=true"), "mysql://db/x?require_ssl=true");
        let u = SecretUrl::new("rediss://u:pw1@h:6380?token=t0k3n");
        assert!(!u.to_string().contains("pw1") && !u.to_string().contains("t0k3n"), "{u}");
    }

    #[test]
    fn bare_secrets_are_hidden_everywhere() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "\"***\"");
        assert_eq!(s.to_string(), "***");
        assert_eq!(serde_json::to_string(&s).expect("json"), "\"***\"");
        assert_eq!(s.expose(), "hunter2");
        assert!(is_secret_name("sasl.password") && is_secret_name("ssl.key.pem"));
        assert!(is_secret_name("sasl.oauthbearer.client.secret") && !is_secret_name("security.protocol"));
    }

    #[test]
    fn secret_files_lose_one_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("dp-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("pw");
        for (content, expected) in
            [("s3cr3t\n", "s3cr3t"), ("s3cr3t", "s3cr3t"), ("s3\ncr3t\r\n", "s3\ncr3t"), (" p \n\n", " p \n")]
        {
            std::fs::write(&file, content).expect("write");
            assert_eq!(read_secret_file("x.password_file", &file).expect("reads").expose(), expected);
        }
        std::fs::write(&file, "\n").expect("write");
        let e = read_secret_file("x.password_file", &file).expect_err("empty");
        assert!(e.starts_with("x.password_file: ") && e.ends_with("is empty"), "{e}");
        let e = read_secret_file("x.password_file", &dir.join("missing")).expect_err("missing");
        assert!(e.starts_with("x.password_file: cannot read "), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
