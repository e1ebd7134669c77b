//! The MySQL sink's errors at startup.

/// Errors of the MySQL sink outside the [`Sink`](dp_core::Sink) calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MysqlSinkError {
    /// The URL could not be parsed.
    #[error("mysql.url: {url} is invalid: {source}")]
    Url {
        /// The URL, password redacted.
        url: String,
        /// The parser's error.
        source: mysql_async::UrlError,
    },
    /// Connecting failed.
    #[error("mysql.url: cannot connect to mysql at {url}: {message} ({hint})")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// What went wrong.
        message: String,
        /// What to check: a TLS failure explained, or whether MySQL runs and takes this user.
        hint: String,
    },
    /// The table settings are invalid.
    #[error("{0}")]
    Config(String),
    /// Creating or inspecting a table failed.
    #[error("cannot prepare table `{table}`: {message}")]
    Table {
        /// The table.
        table: String,
        /// What went wrong.
        message: String,
    },
}
