//! The MySQL/MariaDB [`Sink`](dp_core::Sink): idempotent multi-row inserts, one transaction per batch, and a
//! dead-letter table for records that cannot be stored.
//!
//! A batch is mapped row by row ([`mapping`]: one table model, whose built-in delivery-event
//! table is a preset of declared columns); records that cannot become a row (not JSON, a field
//! too long, …) are written to the dead-letter table *in the same transaction* as the rows, so
//! a batch is delivered all or nothing. Rows go in prepared multi-row
//! `INSERT … ON DUPLICATE KEY UPDATE` statements (a no-op update of the key, or an upsert),
//! split to stay under the 65,535-placeholder limit and a share of `max_allowed_packet`
//! ([`sql::plan_statements`]). The live tables are checked at startup ([`schema`]).
//!
//! Errors are classified ([`classify`], [`fault`]): data errors the server pins on a row (known
//! codes, and SQLSTATE classes 22 and 23) are permanent; statement and schema faults, the same
//! for every row (an unknown or ambiguous column, a missing table, a denied command: known codes
//! and SQLSTATE class 42), are retried like an outage but reported apart, never dead-lettered;
//! everything else — lost connections, deadlocks, lock waits, too many connections, read-only
//! fail-overs — is transient and retried.

mod config;
mod dead_letter;
mod error;
pub mod fault;
pub mod mapping;
pub mod schema;
mod sink;
pub mod sql;
pub mod stored;
mod watermark;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dp_core::DeadLetterPublisher;
use dp_schema_registry::{Decoder, Format};
pub use mysql_async;
use mysql_async::{Pool, Value};

pub use crate::config::{MysqlSinkConfig, RouteConfig, TableSpec};
pub use crate::error::MysqlSinkError;
pub use crate::fault::{Fault, classify, fault_of};
use crate::mapping::ColumnMapping;
use crate::sql::Ident;
pub use crate::stored::WatermarkMode;

/// Statement text by (destination, rows).
pub(crate) type StatementCache = HashMap<(Target, usize), Arc<str>>;

/// What a cached statement writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    /// The table at this position of `MysqlSink::tables`.
    Table(usize),
    /// Deletes from the table at this position of `MysqlSink::tables`.
    Deletes(usize),
    /// The dead-letter table.
    DeadLetters,
}

/// A destination table, ready to write.
struct Table {
    name: Ident,
    mapping: ColumnMapping,
    /// How its records' values and keys are encoded.
    format: Format,
    key_format: Format,
}

impl Table {
    /// True when its records' values or keys go through the Schema Registry.
    fn decodes(&self) -> bool {
        self.format.needs_registry() || self.decodes_keys()
    }

    /// True when its records' keys are decoded: read through the registry, and read at all (a
    /// `kafka_key` column, deletes). A key nothing reads is never a reason to dead-letter.
    fn decodes_keys(&self) -> bool {
        self.key_format.needs_registry() && self.mapping.reads_key()
    }
}

/// A generous estimate of a row's size in a statement.
fn row_bytes(values: &[Value]) -> usize {
    values
        .iter()
        .map(|v| match v {
            Value::Bytes(b) => b.len() * 2 + 8,
            _ => 24,
        })
        .sum::<usize>()
        + 64
}

/// The MySQL sink. Cheap to clone; clones share one pool.
#[derive(Clone)]
pub struct MysqlSink {
    pool: Pool,
    /// Whether [`Sink::close`] disconnects the pool (not when it was lent by the caller).
    owns_pool: bool,
    /// The default table first, then one per route.
    tables: Arc<[Table]>,
    /// Routed topic → position in `tables`.
    routes: Arc<HashMap<String, usize>>,
    /// How an upsert refers to the incoming values on this server.
    syntax: sql::UpsertSyntax,
    dead_letter_table: Ident,
    offsets_table: Ident,
    consumer_group: Option<Arc<str>>,
    watermark_mode: WatermarkMode,
    /// Write dead letters to the dead-letter table.
    dead_letter_rows: bool,
    /// Also (or instead) publish them here, before the transaction commits.
    publisher: Option<Arc<dyn DeadLetterPublisher>>,
    max_statement_bytes: usize,
    statements: Arc<Mutex<StatementCache>>,
    /// Deadline of getting a connection.
    connect_timeout: Duration,
    /// Deadline of one call (a batch's transaction, a read, a ping).
    query_timeout: Duration,
    /// The session settings to apply before each call, on a pool a host lent (its connections
    /// did not run them when they connected, and may have been reset since); `None` on the
    /// sink's own pool, whose connections run them on connect.
    session_each_call: Option<Arc<str>>,
    /// Set when a call outlived its deadline, cleared by the next call that succeeds: the
    /// pool's idle connections may be silent too, so each is pinged (briefly) before use.
    suspect: Arc<std::sync::atomic::AtomicBool>,
    /// How many connections the pool may hold: the most stale ones to try past.
    max_connections: usize,
    /// Decodes the values and keys of tables read through the Schema Registry.
    decoder: Option<Arc<Decoder>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use dp_core::{SecretUrl, TlsConfig, TlsVerify};
    use mysql_async::{Opts, SslOpts};

    #[test]
    fn config_validation_names_the_key() {
        MysqlSinkConfig::default().validate().expect("defaults validate");
        let bad = |f: &dyn Fn(&mut MysqlSinkConfig)| {
            let mut c = MysqlSinkConfig::default();
            f(&mut c);
            c.validate().expect_err("must be rejected")
        };
        assert!(bad(&|c| c.table = "events; DROP TABLE x".into()).starts_with("mysql.table"));
        assert!(bad(&|c| c.table = "a".repeat(60)).starts_with("mysql.dead_letter_table"));
        assert!(bad(&|c| c.url = SecretUrl::new("postgres://u:pw@h/db")).starts_with("mysql.url"));
        assert!(bad(&|c| c.url = SecretUrl::new("mysql://u:pw@h")).contains("names no database"));
        assert!(!bad(&|c| c.url = SecretUrl::new("mysql://u:pw@h")).contains("pw@"));
        assert!(bad(&|c| c.max_connections = 0).starts_with("mysql.max_connections"));
        let e = bad(&|c| {
            c.url = SecretUrl::new("mysql://u:pw@h/db");
            c.password_file = Some("/run/secrets/mysql".into());
        });
        assert!(e.starts_with("mysql.password_file") && !e.contains("pw@"), "{e}");
        let e = bad(&|c| c.tls.ca_file = Some("/ca.pem".into()));
        assert!(e.starts_with("mysql.tls.ca_file") && e.contains("mysql.tls.enabled"), "{e}");
        let e = bad(&|c| c.tls = TlsConfig { enabled: true, verify: TlsVerify::Ca, ..TlsConfig::default() });
        assert!(e.starts_with("mysql.tls.verify"), "{e}");
    }

    #[test]
    fn client_options_take_the_password_file_and_tls() {
        let dir = std::env::temp_dir().join(format!("dp-mysql-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (pw, ca) = (dir.join("pw"), dir.join("ca.pem"));
        std::fs::write(&pw, "s3cr3t\n").expect("write");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").expect("write");
        let mut c = MysqlSinkConfig { password_file: Some(pw), ..MysqlSinkConfig::default() };
        let opts = Opts::from(c.opts().expect("opts"));
        assert_eq!(opts.pass(), Some("s3cr3t"), "one trailing newline dropped");
        assert!(opts.ssl_opts().is_none(), "TLS is off by default");
        assert!(!opts.prefer_socket());
        c.tls = TlsConfig { enabled: true, ca_file: Some(ca), ..TlsConfig::default() };
        let opts = Opts::from(c.opts().expect("opts"));
        let ssl = opts.ssl_opts().expect("TLS on");
        assert!(
            ssl.disable_built_in_roots() && ssl.root_certs().len() == 1,
            "only the private CA is trusted"
        );
        assert!(!ssl.accept_invalid_certs() && !ssl.skip_domain_validation(), "full verification by default");
        c.tls.verify = TlsVerify::None;
        assert!(Opts::from(c.opts().expect("opts")).ssl_opts().is_some_and(SslOpts::accept_invalid_certs));
        c.tls.ca_file = Some(dir.join("missing.pem"));
        let e = c.opts().expect_err("missing CA").to_string();
        assert!(e.starts_with("mysql.tls.ca_file: cannot read "), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
