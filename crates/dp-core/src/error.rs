//! Errors at the trait boundaries, each carrying a retry hint.
//!
//! Backends keep their own detailed error enums and convert into these at the trait boundary,
//! so the runtime can decide what to do — back off and retry, or isolate the bad records —
//! without knowing which backend failed.

use std::error::Error as StdError;
use std::fmt;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Whether retrying the same operation can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The backend is unreachable, overloaded or failing over: retry the same work later.
    Transient,
    /// The input itself is refused: retrying the same work fails the same way.
    Permanent,
}

impl ErrorKind {
    /// A short lowercase name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! boundary_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            kind: ErrorKind,
            message: String,
            source: Option<BoxError>,
        }

        impl $name {
            /// A transient error: the same call may succeed later.
            pub fn transient(message: impl Into<String>) -> Self {
                Self { kind: ErrorKind::Transient, message: message.into(), source: None }
            }

            /// A permanent error: the same call will fail the same way.
            pub fn permanent(message: impl Into<String>) -> Self {
                Self { kind: ErrorKind::Permanent, message: message.into(), source: None }
            }

            /// Attaches the underlying error.
            pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
                self.source = Some(source.into());
                self
            }

            /// Whether a retry can succeed.
            pub fn kind(&self) -> ErrorKind {
                self.kind
            }

            /// True for [`ErrorKind::Transient`].
            pub fn is_transient(&self) -> bool {
                self.kind == ErrorKind::Transient
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.message)?;
                if let Some(s) = &self.source {
                    write!(f, ": {s}")?;
                }
                Ok(())
            }
        }

        impl StdError for $name {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                self.source.as_deref().map(|s| s as &(dyn StdError + 'static))
            }
        }
    };
}

boundary_error!(
    /// A [`Source`](crate::Source) failed.
    SourceError
);
boundary_error!(
    /// A [`Buffer`](crate::Buffer) failed.
    BufferError
);

/// A [`Sink`](crate::Sink) failed.
///
/// Besides the retry hint it may carry the store's own error code (a MySQL error number, say)
/// and SQLSTATE, which end up in the dead-letter entry of a record the store refused.
#[derive(Debug)]
pub struct SinkError {
    kind: ErrorKind,
    message: String,
    code: Option<u32>,
    sqlstate: Option<String>,
    source: Option<BoxError>,
}

impl SinkError {
    /// A transient error: the same batch may succeed later.
    pub fn transient(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Transient, message: message.into(), code: None, sqlstate: None, source: None }
    }

    /// A permanent error: the same batch will fail the same way.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Permanent, message: message.into(), code: None, sqlstate: None, source: None }
    }

    /// Attaches the store's error code and SQLSTATE.
    pub fn with_code(mut self, code: u32, sqlstate: Option<String>) -> Self {
        self.code = Some(code);
        self.sqlstate = sqlstate;
        self
    }

    /// Attaches the store's SQLSTATE alone, for stores without numeric error codes
    /// (PostgreSQL).
    pub fn with_sqlstate(mut self, sqlstate: impl Into<String>) -> Self {
        self.sqlstate = Some(sqlstate.into());
        self
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Whether a retry can succeed.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True for [`ErrorKind::Transient`].
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// The store's error code, if it gave one.
    pub fn code(&self) -> Option<u32> {
        self.code
    }

    /// The store's SQLSTATE, if it gave one.
    pub fn sqlstate(&self) -> Option<&str> {
        self.sqlstate.as_deref()
    }

    /// The message without the source chain.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl StdError for SinkError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let e = SinkError::permanent("insert into `t` failed").with_code(1406, Some("22001".into()));
        assert_eq!(e.kind(), ErrorKind::Permanent);
        assert_eq!(e.code(), Some(1406));
        assert_eq!(e.sqlstate(), Some("22001"));
        assert_eq!(e.to_string(), "insert into `t` failed");
        let s = SourceError::transient("poll failed").with_source(std::io::Error::other("reset"));
        assert!(s.is_transient());
        assert_eq!(s.to_string(), "poll failed: reset");
        assert!(StdError::source(&s).is_some());
    }
}
