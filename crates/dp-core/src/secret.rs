//! Connection URLs that carry credentials, kept out of logs and printed configuration.

use std::fmt;

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

/// Replaces the password of `scheme://user:password@host…` with `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..scheme_end], &userinfo[..colon], &rest[at..]),
        None => url.to_owned(),
    }
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
}
