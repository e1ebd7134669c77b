//! Errors at the trait boundaries, each carrying a retry hint.
//!
//! Backends keep their own detailed error enums and convert into these at the trait boundary,
//! so the runtime can decide what to do — back off and retry, or isolate the bad records —
//! without knowing which backend failed.
//!
//! A sink's error has one of three [kinds](ErrorKind), after what it says about the work:
//!
//! - [`Transient`](ErrorKind::Transient), an *outage*: the store is unreachable, overloaded,
//!   failing over, or the batch met a deadlock. The same batch is retried with backoff.
//! - [`Permanent`](ErrorKind::Permanent), a *data fault*: the store refuses a value of one
//!   record (too long, out of range, not JSON). The runtime halves the batch until the refused
//!   records are isolated and dead-letters them; the others are stored.
//! - [`Statement`](ErrorKind::Statement), a *statement or schema fault*: the statement, or the
//!   table it writes, is wrong (an unknown column, a missing table, no privilege), so every
//!   record fails the same way. Nothing is dead-lettered: the batch is retried with backoff like
//!   an outage until an operator fixes the table or the mapping, and the runtime reports it
//!   apart (readiness, a metric, the log).
//!
//! A permanent error the sink could only classify by its class of error (an SQLSTATE class
//! that means "data", with a code it does not know) can be marked
//! [presumed](SinkError::presumed): if the batch's first records then fail alone exactly as the
//! whole batch did, the runtime takes it for a statement fault instead.

use std::error::Error as StdError;
use std::fmt;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Whether retrying the same operation can succeed, and what the failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The backend is unreachable, overloaded or failing over: retry the same work later.
    Transient,
    /// The input itself is refused: retrying the same work fails the same way.
    Permanent,
    /// The statement, or the schema it runs against, is wrong: every record fails the same way,
    /// whatever its data (an unknown column, a missing table, a missing privilege). Retrying
    /// succeeds once an operator fixes it, so it is retried like [`Transient`](Self::Transient),
    /// never dead-lettered. Only sinks use it.
    Statement,
}

impl ErrorKind {
    /// A short lowercase name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Statement => "statement",
        }
    }

    /// Whether the runtime retries work that failed this way (with backoff) rather than
    /// isolating refused records: true for [`Transient`](Self::Transient) and
    /// [`Statement`](Self::Statement).
    pub fn is_retried(self) -> bool {
        matches!(self, Self::Transient | Self::Statement)
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
    /// A permanent error classified by its class only (see [`SinkError::presumed`]).
    presumed: bool,
    source: Option<BoxError>,
}

impl SinkError {
    fn new(kind: ErrorKind, message: String) -> Self {
        Self { kind, message, code: None, sqlstate: None, presumed: false, source: None }
    }

    /// A transient error (an outage): the same batch may succeed later.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message.into())
    }

    /// A permanent error (a data fault): the same batch will fail the same way, because of the
    /// data of one or more of its records.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message.into())
    }

    /// A statement or schema fault: the store refuses the statement itself, so every record
    /// fails the same way whatever its data. Retried like a transient error until it is fixed;
    /// never dead-lettered.
    pub fn statement(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Statement, message.into())
    }

    /// Marks a permanent error as a *presumed* data fault: the store's class of error says
    /// "data" (an SQLSTATE of class 22 or 23, say) but its code is not one the sink knows to
    /// name a value of a row. If the batch's first two records then each fail alone with this
    /// same error (code, SQLSTATE and text) before anything of the batch is stored, the runtime
    /// takes it for a statement fault: the first record was dead-lettered by then, the rest of
    /// the batch is retried. A known data fault is never second-guessed this way.
    pub fn presumed(mut self) -> Self {
        self.presumed = self.kind == ErrorKind::Permanent;
        self
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

    /// Whether a retry can succeed, and what the failure is about.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when the runtime retries the same batch rather than isolating refused records:
    /// [`ErrorKind::Transient`], and [`ErrorKind::Statement`] (retried until the statement or
    /// the schema is fixed). False for [`ErrorKind::Permanent`] only.
    pub fn is_transient(&self) -> bool {
        self.kind.is_retried()
    }

    /// True for [`ErrorKind::Statement`].
    pub fn is_statement(&self) -> bool {
        self.kind == ErrorKind::Statement
    }

    /// True for a permanent error marked [presumed](Self::presumed).
    pub fn is_presumed(&self) -> bool {
        self.presumed
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

    #[test]
    fn statement_faults_are_retried_and_presumed_applies_to_permanent_errors_only() {
        let e = SinkError::statement("insert into `t` failed").with_code(1054, Some("42S22".into()));
        assert_eq!((e.kind(), e.kind().as_str()), (ErrorKind::Statement, "statement"));
        assert!(e.is_statement() && e.is_transient(), "retried, never dead-lettered");
        assert!(!SinkError::transient("reset").is_statement());
        let p = SinkError::permanent("insert").with_code(1999, Some("22999".into())).presumed();
        assert!(p.is_presumed() && !p.is_transient() && !p.is_statement());
        assert!(!SinkError::permanent("insert").is_presumed(), "a permanent error is known by default");
        assert!(!SinkError::statement("x").presumed().is_presumed());
        assert!(!SinkError::transient("x").presumed().is_presumed());
        assert!(ErrorKind::Transient.is_retried() && !ErrorKind::Permanent.is_retried());
    }
}
