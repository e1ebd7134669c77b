//! The MySQL/MariaDB [`Sink`]: idempotent multi-row inserts, one transaction per batch, and a
//! dead-letter table for records that cannot be stored.
//!
//! A batch is mapped row by row ([`mapping`]); records that cannot become a row (not JSON, a
//! field too long, …) are written to the dead-letter table *in the same transaction* as the
//! rows, so a batch is delivered all or nothing. Rows go in prepared multi-row
//! `INSERT … ON DUPLICATE KEY UPDATE event_id = event_id` statements, split to stay under the
//! 65,535-placeholder limit and a share of `max_allowed_packet` ([`sql::plan_statements`]).
//!
//! Errors are classified ([`classify`], [`fault`]): data errors the server pins on a row (known
//! codes, and SQLSTATE classes 22 and 23) are permanent; statement and schema faults, the same
//! for every row (an unknown or ambiguous column, a missing table, a denied command: known codes
//! and SQLSTATE class 42), are retried like an outage but reported apart, never dead-lettered;
//! everything else — lost connections, deadlocks, lock waits, too many connections, read-only
//! fail-overs — is transient and retried.

pub mod columns;
pub mod fault;
mod live;
pub mod mapping;
pub mod sql;
pub mod stored;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dp_core::{
    BatchOutcome, DeadLetter, DeadLetterPublisher, Record, SecretUrl, Sink, SinkError, TlsConfig, TlsVerify,
    Watermarks, encode_record,
};
pub use mysql_async;
use mysql_async::prelude::*;
use mysql_async::{
    ClientIdentity, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, SslOpts, TxOpts, Value,
};
use serde::{Deserialize, Serialize};

use crate::columns::{ColumnConfig, ColumnMapping, WriteConfig, WriteMode};
pub use crate::fault::{Fault, classify, fault_of};
use crate::mapping::{DateTimeParts, Mapping, Row};
use crate::stored::Stored;
pub use crate::stored::WatermarkMode;

/// Settings of the MySQL sink (`[mysql]` in the config file, `DP_MYSQL__*` in the environment).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlSinkConfig {
    /// `mysql://user[:password]@host:port/database`. TCP is used even for `localhost`.
    pub url: SecretUrl,
    /// A file holding the password (a mounted Kubernetes secret), read at startup; one
    /// trailing newline is dropped. The URL then carries none.
    pub password_file: Option<PathBuf>,
    /// TLS to the server (`[mysql.tls]`): off unless enabled; when on, the server's certificate
    /// is verified against `ca_file` (or the built-in Mozilla roots) and must name the host.
    pub tls: TlsConfig,
    /// Table rows are written to.
    pub table: String,
    /// Dead-letter table; `<table>_dead_letter` when unset.
    pub dead_letter_table: Option<String>,
    /// Create both tables at startup if they are missing.
    pub create_table: bool,
    /// Offset watermark table (`pipeline_offsets`): per consumer group and partition, the next
    /// offset to consume, written in the same transaction as the rows.
    pub offsets_table: String,
    /// Payload field holding the idempotency key.
    pub event_id_field: String,
    /// Payloads larger than this are dead-lettered instead of inserted.
    pub max_payload_bytes: usize,
    /// Most connections the pool opens.
    pub max_connections: usize,
    /// How long to wait for a connection (a new one's handshake, or a free one of the pool).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The longest one call to MySQL may take: a batch's whole transaction (every statement and
    /// the commit), a watermark read, a ping. Past it the connection is closed without waiting
    /// for the server — never returned to the pool — and the call fails as an outage: the
    /// batch is retried on a new connection with the usual backoff. The session's
    /// `net_read_timeout`/`net_write_timeout` are set to it and `wait_timeout` to
    /// `max(90 s, 3 × query_timeout)`, so the server too rolls back what a vanished client left
    /// open, and releases its locks, within a bounded time.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// The session time zone (`SET time_zone`) every connection runs with: the zone in which
    /// MySQL reads and writes `TIMESTAMP` values and computes `CURRENT_TIMESTAMP`. The pipeline
    /// sends UTC times, so leave it at `+00:00` unless you know why: an offset (`+05:30`) or,
    /// when the server has its time-zone tables loaded, a name (`Europe/Paris`).
    pub time_zone: String,
    /// The columns of `table`, declared (`[[mysql.columns]]`): where each value is in the
    /// record and its type. Empty: the built-in delivery-event columns (`event_id`,
    /// `tracking_id`, `status`, `event_time`, `payload` and the Kafka coordinates).
    pub columns: Vec<ColumnConfig>,
    /// How rows are written to `table` (`[mysql.write]`): `insert` or `upsert` on a key, with
    /// an optional monotonic guard. Upserts need declared `columns`.
    pub write: WriteConfig,
    /// Topics written to tables of their own (`[[mysql.routes]]`), each with its columns and
    /// write mode; topics without a route go to `table`.
    pub routes: Vec<RouteConfig>,
}

/// One topic written to its own table (`[[mysql.routes]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The Kafka topic (one of `kafka.topics`).
    pub topic: String,
    /// The table its records go to.
    pub table: String,
    /// The table's declared columns; empty: the built-in delivery-event columns.
    #[serde(default)]
    pub columns: Vec<ColumnConfig>,
    /// How rows are written to the table.
    #[serde(default)]
    pub write: WriteConfig,
}

/// How one table's rows are made and written, checked.
#[derive(Debug, Clone)]
pub enum TableShape {
    /// The built-in delivery-event columns, inserted idempotently on `event_id`.
    Builtin,
    /// Declared columns, with their write mode.
    Columns(ColumnMapping),
}

/// One destination table: its name, its shape, and the topic routed to it (`None` for the
/// default table, `mysql.table`).
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Settings path, for messages (`mysql`, `mysql.routes[0]`).
    pub at: String,
    /// Routed topic; `None` for the default table.
    pub topic: Option<String>,
    /// The table.
    pub table: String,
    /// Its columns and write mode.
    pub shape: TableShape,
}

impl TableSpec {
    /// `CREATE TABLE IF NOT EXISTS` for this table.
    pub fn create_table(&self) -> String {
        match &self.shape {
            TableShape::Builtin => sql::create_table(&self.table),
            TableShape::Columns(m) => m.create_table(&self.table),
        }
    }
}

impl Default for MysqlSinkConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl::new("mysql://root@127.0.0.1:3306/test"),
            password_file: None,
            tls: TlsConfig::default(),
            table: "delivery_events".into(),
            dead_letter_table: None,
            offsets_table: "pipeline_offsets".into(),
            create_table: true,
            event_id_field: "event_id".into(),
            max_payload_bytes: 4 * 1024 * 1024,
            max_connections: 4,
            connect_timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(30),
            time_zone: "+00:00".into(),
            columns: Vec::new(),
            write: WriteConfig::default(),
            routes: Vec::new(),
        }
    }
}

impl MysqlSinkConfig {
    /// The dead-letter table's name.
    pub fn dead_letter_table(&self) -> String {
        self.dead_letter_table.clone().unwrap_or_else(|| format!("{}_dead_letter", self.table))
    }

    /// Checks the settings without connecting. Errors name the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let opts = Opts::from_url(self.url.expose())
            .map_err(|e| format!("mysql.url: `{}` is not a valid mysql URL: {e}", self.url.redacted()))?;
        if opts.db_name().is_none() {
            return Err(format!("mysql.url: `{}` names no database; add /<database>", self.url.redacted()));
        }
        if let Some(file) = &self.password_file {
            if file.as_os_str().is_empty() {
                return Err("mysql.password_file: must not be empty; remove it, or give a file".into());
            }
            if opts.pass().is_some() {
                return Err(format!(
                    "mysql.password_file: `{}` has a password already; give it in one place only",
                    self.url.redacted()
                ));
            }
        }
        self.tls.validate("mysql.tls", self.tls.enabled)?;
        if self.tls.enabled && self.tls.verify == TlsVerify::Ca {
            // mysql_async 0.37 recognises a name mismatch by rustls's old error text, which
            // rustls 0.23 no longer produces: the name would be checked anyway.
            return Err(
                "mysql.tls.verify: \"ca\" is not supported for MySQL (the client checks the host name regardless); use \"full\" and connect by a name the certificate holds"
                    .into(),
            );
        }
        if !sql::is_identifier(&self.table) {
            return Err(format!(
                "mysql.table: `{}` is not a plain identifier (1-64 of [A-Za-z0-9_], not starting with a digit)",
                self.table
            ));
        }
        if !sql::is_identifier(&self.dead_letter_table()) {
            return Err(format!(
                "mysql.dead_letter_table: `{}` is not a plain identifier (1-64 of [A-Za-z0-9_]); set it explicitly",
                self.dead_letter_table()
            ));
        }
        if !sql::is_identifier(&self.offsets_table) {
            return Err(format!(
                "mysql.offsets_table: `{}` is not a plain identifier (1-64 of [A-Za-z0-9_])",
                self.offsets_table
            ));
        }
        if self.event_id_field.is_empty() {
            return Err("mysql.event_id_field: must not be empty".into());
        }
        if self.max_payload_bytes == 0 {
            return Err("mysql.max_payload_bytes: must be greater than zero".into());
        }
        if self.max_connections == 0 {
            return Err("mysql.max_connections: must be greater than zero".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("mysql.connect_timeout: must be greater than zero".into());
        }
        if self.query_timeout < Duration::from_secs(1) || self.query_timeout > Duration::from_secs(3600) {
            return Err(format!(
                "mysql.query_timeout: {:?} is out of range; give 1s to 1h (a batch normally takes well under a second)",
                self.query_timeout
            ));
        }
        if !is_time_zone(&self.time_zone) {
            return Err(format!(
                "mysql.time_zone: `{}` is neither an offset such as +00:00 nor a zone name such as Europe/Paris",
                self.time_zone
            ));
        }
        self.tables().map(|_| ())
    }

    /// The destination tables, default first, with their mappings checked.
    pub fn tables(&self) -> Result<Vec<TableSpec>, String> {
        let shape = |at: &str, columns: &[ColumnConfig], write: &WriteConfig| -> Result<TableShape, String> {
            if !columns.is_empty() {
                return ColumnMapping::compile(at, columns, write, self.max_payload_bytes)
                    .map(TableShape::Columns);
            }
            if write.mode == WriteMode::Upsert || write.guard.is_some() {
                return Err(format!(
                    "{at}.write: an upsert needs declared columns ({at}.columns) with a key; the built-in table is insert-only"
                ));
            }
            if !(write.key.is_empty() || write.key == ["event_id"]) {
                return Err(format!(
                    "{at}.write.key: the built-in table's key is [\"event_id\"]; declare {at}.columns to choose another"
                ));
            }
            Ok(TableShape::Builtin)
        };
        let mut out = vec![TableSpec {
            at: "mysql".into(),
            topic: None,
            table: self.table.clone(),
            shape: shape("mysql", &self.columns, &self.write)?,
        }];
        let reserved = [self.dead_letter_table(), self.offsets_table.clone()];
        if reserved.iter().any(|r| r.eq_ignore_ascii_case(&self.table)) {
            return Err(format!("mysql.table: `{}` is also the dead-letter or offsets table", self.table));
        }
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("mysql.routes[{i}]");
            if r.topic.is_empty() {
                return Err(format!("{at}.topic: must not be empty"));
            }
            if self.routes[..i].iter().any(|o| o.topic == r.topic) {
                return Err(format!("{at}.topic: `{}` is routed twice", r.topic));
            }
            if !sql::is_identifier(&r.table) {
                return Err(format!(
                    "{at}.table: `{}` is not a plain identifier (1-64 of [A-Za-z0-9_], not starting with a digit)",
                    r.table
                ));
            }
            if reserved.iter().any(|t| t.eq_ignore_ascii_case(&r.table)) {
                return Err(format!("{at}.table: `{}` is the dead-letter or offsets table", r.table));
            }
            if out.iter().any(|t| t.table.eq_ignore_ascii_case(&r.table)) {
                return Err(format!(
                    "{at}.table: `{}` is already the table of another route or the default table; give each its own",
                    r.table
                ));
            }
            out.push(TableSpec {
                at: at.clone(),
                topic: Some(r.topic.clone()),
                table: r.table.clone(),
                shape: shape(&at, &r.columns, &r.write)?,
            });
        }
        Ok(out)
    }

    /// The statements `migrate` runs (`migrate --dry-run` prints them).
    pub fn ddl(&self) -> Result<Vec<String>, String> {
        let mut out: Vec<String> = self.tables()?.iter().map(TableSpec::create_table).collect();
        out.push(sql::create_dead_letter_table(&self.dead_letter_table()));
        out.push(sql::create_offsets_table(&self.offsets_table));
        Ok(out)
    }

    /// The client options of `url` with the password of `password_file` and the TLS of `tls`,
    /// over TCP even for a local server. Reads those files (the one I/O of this config); every
    /// pool to this server — the sink's, the `dlq` and `bench` commands' — starts from here.
    pub fn opts(&self) -> Result<OptsBuilder, MysqlSinkError> {
        let url = self.url.redacted();
        let opts = Opts::from_url(self.url.expose())
            .map_err(|source| MysqlSinkError::Url { url: url.clone(), source })?;
        let mut builder = OptsBuilder::from_opts(opts)
            // mysql_async would silently switch to the Unix socket for a local server.
            .prefer_socket(false);
        if let Some(file) = &self.password_file {
            let password =
                dp_core::read_secret_file("mysql.password_file", file).map_err(MysqlSinkError::Config)?;
            builder = builder.pass(Some(password.expose()));
        }
        if self.tls.enabled {
            builder = builder.ssl_opts(Some(self.ssl_opts()?));
        }
        Ok(builder.init(vec![self.session_sql()]))
    }

    /// The session settings every connection runs with: the time zone, and the server's own
    /// deadlines (see [`query_timeout`](Self::query_timeout)). Set by `opts` on each new
    /// connection of the pools made from it, and by the sink before each call on a pool a host
    /// lends it.
    pub fn session_sql(&self) -> String {
        let query = self.query_timeout.as_secs().max(1);
        let idle = (3 * query).max(90);
        // `time_zone` is checked by `validate` (`is_time_zone`): no quote can be in it.
        format!(
            "SET time_zone = '{}', wait_timeout = {idle}, net_read_timeout = {query}, net_write_timeout = {query}",
            self.time_zone
        )
    }

    fn ssl_opts(&self) -> Result<SslOpts, MysqlSinkError> {
        let files = self.tls.read_files("mysql.tls").map_err(MysqlSinkError::Config)?;
        let mut ssl = SslOpts::default();
        if let Some(ca) = files.ca {
            // A private CA replaces the built-in roots: nothing else is trusted.
            ssl = ssl.with_root_certs(vec![ca.into()]).with_disable_built_in_roots(true);
        }
        if let Some((cert, key)) = files.client {
            ssl = ssl.with_client_identity(Some(ClientIdentity::new(cert.into(), key.into())));
        }
        Ok(match self.tls.verify {
            TlsVerify::Full => ssl,
            TlsVerify::Ca => ssl.with_danger_skip_domain_validation(true),
            TlsVerify::None => ssl.with_danger_accept_invalid_certs(true),
        })
    }
}

/// Errors of the MySQL sink outside the [`Sink`] calls.
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

/// Statement text by (destination, rows).
type StatementCache = HashMap<(Target, usize), Arc<str>>;

/// What a cached statement writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    /// The table at this position of `MysqlSink::tables`.
    Table(usize),
    /// The dead-letter table.
    DeadLetters,
}

/// A destination table, ready to write.
struct Table {
    name: Arc<str>,
    shape: TableShape,
}

/// One record made into a row of its table.
enum MappedRow<'a> {
    /// The built-in columns, borrowing from the record.
    Builtin(Row<'a>),
    /// Declared columns, one value each.
    Values(Vec<Value>),
}

impl MappedRow<'_> {
    /// A generous estimate of the row's size in a statement.
    fn bytes(&self) -> usize {
        match self {
            Self::Builtin(r) => r.payload.len() + 256,
            Self::Values(v) => v.iter().map(value_bytes).sum::<usize>() + 64,
        }
    }
}

fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Bytes(b) => b.len() * 2 + 8,
        _ => 24,
    }
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
    dead_letter_table: Arc<str>,
    offsets_table: Arc<str>,
    consumer_group: Option<Arc<str>>,
    watermark_mode: WatermarkMode,
    /// Write dead letters to the dead-letter table.
    dead_letter_rows: bool,
    /// Also (or instead) publish them here, before the transaction commits.
    publisher: Option<Arc<dyn DeadLetterPublisher>>,
    mapping: Arc<Mapping>,
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
}

impl MysqlSink {
    /// Connects, reads `max_allowed_packet`, and creates the tables when configured to.
    pub async fn connect(config: &MysqlSinkConfig) -> Result<Self, MysqlSinkError> {
        let constraints = PoolConstraints::new(0, config.max_connections.max(1)).unwrap_or_default();
        let opts = config.opts()?.tcp_nodelay(true).stmt_cache_size(64).pool_opts(
            PoolOpts::default()
                .with_constraints(constraints)
                // Keep idle connections, and their prepared statements, between batches:
                // by default the pool closes every connection it gets back (one TCP and
                // login handshake plus four statement preparations per batch, the 1000-row
                // INSERT's among them).
                .with_inactive_connection_ttl(Duration::from_secs(60))
                // A reset would drop the prepared statements too. Nothing here leaves
                // session state behind; an unfinished transaction is rolled back by the pool.
                .with_reset_connection(false),
        );
        let mut sink = Self::with_pool(Pool::new(opts), config).await?;
        sink.owns_pool = true;
        sink.session_each_call = None;
        Ok(sink)
    }

    /// Uses a pool the caller already has (a service sharing its own pool with the pipeline)
    /// instead of opening one from `config.url`; every other setting of `config` applies.
    /// The pool stays the caller's: closing the sink leaves it connected.
    pub async fn with_pool(pool: Pool, config: &MysqlSinkConfig) -> Result<Self, MysqlSinkError> {
        let url = config.url.redacted();
        let connect_err = |message: String| {
            let hint = dp_core::explain_tls_error(&message, "mysql.tls")
                .unwrap_or_else(|| "is MySQL running there, and does it accept this user?".to_owned());
            MysqlSinkError::Connect { url: url.clone(), message, hint }
        };
        let mut conn = tokio::time::timeout(config.connect_timeout, pool.get_conn())
            .await
            .map_err(|_| connect_err(format!("no answer within {:?}", config.connect_timeout)))?
            .map_err(|e| connect_err(e.to_string()))?;
        let max_packet: Option<u64> =
            conn.query_first("SELECT @@max_allowed_packet").await.map_err(|e| connect_err(e.to_string()))?;
        let version: Option<String> =
            conn.query_first("SELECT VERSION()").await.map_err(|e| connect_err(e.to_string()))?;
        let syntax = sql::UpsertSyntax::for_server(version.as_deref().unwrap_or_default());
        let specs = config.tables().map_err(MysqlSinkError::Config)?;
        let dlq = config.dead_letter_table();
        if config.create_table {
            let ddl = config.ddl().map_err(MysqlSinkError::Config)?;
            for (stmt, table) in ddl
                .iter()
                .zip(specs.iter().map(|t| t.table.clone()).chain([dlq.clone(), config.offsets_table.clone()]))
            {
                conn.query_drop(stmt)
                    .await
                    .map_err(|e| MysqlSinkError::Table { table, message: e.to_string() })?;
            }
        }
        let mut tables = Vec::with_capacity(specs.len());
        let mut routes = HashMap::new();
        for spec in specs {
            match &spec.shape {
                TableShape::Builtin => check_columns(&mut conn, &spec.table, sql::ROW_COLUMNS).await?,
                TableShape::Columns(m) => live::check(&mut conn, &spec, m).await?,
            }
            if let Some(topic) = &spec.topic {
                routes.insert(topic.clone(), tables.len());
            }
            tables.push(Table { name: Arc::from(spec.table.as_str()), shape: spec.shape });
        }
        check_columns(&mut conn, &dlq, sql::DEAD_LETTER_COLUMNS).await?;
        if config.create_table {
            add_stored_ranges(&mut conn, &config.offsets_table).await?;
        }
        check_columns(&mut conn, &config.offsets_table, OFFSETS_COLUMNS).await?;
        drop(conn);
        // Leave room for the statement text and protocol framing.
        let max_statement_bytes = (max_packet.unwrap_or(4 << 20) as usize / 2).max(64 * 1024);
        Ok(Self {
            pool,
            owns_pool: false,
            tables: tables.into(),
            routes: Arc::new(routes),
            syntax,
            dead_letter_table: Arc::from(dlq.as_str()),
            offsets_table: Arc::from(config.offsets_table.as_str()),
            consumer_group: None,
            watermark_mode: WatermarkMode::Prefix,
            dead_letter_rows: true,
            publisher: None,
            mapping: Arc::new(Mapping {
                event_id_field: config.event_id_field.clone(),
                max_payload_bytes: config.max_payload_bytes,
            }),
            max_statement_bytes,
            statements: Arc::default(),
            connect_timeout: config.connect_timeout,
            query_timeout: config.query_timeout,
            session_each_call: Some(Arc::from(config.session_sql())),
            suspect: Arc::default(),
            max_connections: config.max_connections,
        })
    }

    /// Keeps an offset watermark for `group`: each batch raises, in its own transaction, the
    /// group's next offset of every partition it covers, and skips records below it. A replay
    /// of records already stored — after a lost Kafka commit, a restore, a rebalance overlap —
    /// then inserts nothing, even into a table without a unique key.
    pub fn with_consumer_group(mut self, group: &str) -> Self {
        self.consumer_group = Some(Arc::from(group));
        self
    }

    /// How batches advance the watermark ([`WatermarkMode::Prefix`] unless set): under
    /// `commit_policy = "after_buffer"` a partition's newer records may be stored before older
    /// ones still held in another instance's Redis buffer, so only the offsets stored are
    /// recorded ([`WatermarkMode::Ranges`]); see [`stored`].
    pub fn with_watermark_mode(mut self, mode: WatermarkMode) -> Self {
        self.watermark_mode = mode;
        self
    }

    /// Publishes dead letters to `publisher` (a Kafka topic, say) before each transaction that
    /// holds them commits; with `keep_table` false they are no longer written to the
    /// dead-letter table. A failed publish fails the batch transiently (it is retried).
    pub fn with_dead_letter_publisher(
        mut self,
        publisher: Arc<dyn DeadLetterPublisher>,
        keep_table: bool,
    ) -> Self {
        self.publisher = Some(publisher);
        self.dead_letter_rows = keep_table;
        self
    }

    /// Stores dead letters in the table and/or hands them to the publisher, within `tx`.
    async fn store_dead_letters(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        entries: &[DeadLetter],
    ) -> Result<(), SinkError> {
        if entries.is_empty() {
            return Ok(());
        }
        if self.dead_letter_rows {
            self.insert_dead_letters(tx, entries).await?;
        }
        if let Some(publisher) = &self.publisher {
            publisher.publish(entries).await?;
        }
        Ok(())
    }

    /// The watermarks of `partitions` for the configured group (next offset to consume);
    /// partitions without one are absent.
    pub async fn watermarks(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<Vec<(String, i32, i64)>, SinkError> {
        let Some(group) = &self.consumer_group else { return Ok(Vec::new()) };
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.begin().await?;
        let mut params: Vec<Value> = vec![Value::from(&**group)];
        for (t, p) in partitions {
            params.push(Value::from(t.as_str()));
            params.push(Value::from(*p));
        }
        let read = conn.exec(sql::read_offsets(&self.offsets_table, partitions.len()), params);
        match tokio::time::timeout(self.query_timeout, read).await {
            Ok(marks) => marks.map_err(|e| classify("cannot read offset watermarks", e)),
            Err(_) => Err(self.abandon(conn, "reading offset watermarks").await),
        }
    }

    /// The connection pool, for callers that share it.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The default table rows are written to (`mysql.table`).
    pub fn table(&self) -> &str {
        &self.tables[0].name
    }

    /// Every table rows are written to: the default table, then the routed ones.
    pub fn tables(&self) -> Vec<&str> {
        self.tables.iter().map(|t| &*t.name).collect()
    }

    /// The dead-letter table.
    pub fn dead_letter_table(&self) -> &str {
        &self.dead_letter_table
    }

    fn statement(&self, target: Target, rows: usize) -> Arc<str> {
        let mut cache = match self.statements.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        Arc::clone(cache.entry((target, rows)).or_insert_with(|| {
            Arc::from(match target {
                Target::DeadLetters => sql::insert_dead_letters(&self.dead_letter_table, self.syntax, rows),
                Target::Table(i) => {
                    let t = &self.tables[i];
                    match &t.shape {
                        TableShape::Builtin => sql::insert_rows(&t.name, rows),
                        TableShape::Columns(m) => sql::write_rows(&t.name, m, self.syntax, rows),
                    }
                }
            })
        }))
    }

    /// Writes `rows` to table `index`; returns what the server did with them.
    async fn write_rows(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        index: usize,
        rows: &[(&Record, MappedRow<'_>)],
    ) -> Result<BatchOutcome, SinkError> {
        let table = &self.tables[index];
        let columns = match &table.shape {
            TableShape::Builtin => sql::ROW_COLUMNS.len(),
            TableShape::Columns(m) => m.columns.len(),
        };
        let upsert = matches!(&table.shape, TableShape::Columns(m) if m.mode == WriteMode::Upsert);
        let plan = sql::plan_statements(
            rows.iter().map(|(_, r)| r.bytes()),
            columns,
            usize::MAX,
            self.max_statement_bytes,
        );
        let mut outcome = BatchOutcome::default();
        for range in plan {
            let chunk = &rows[range];
            let mut params = Vec::with_capacity(chunk.len() * columns);
            for (rec, row) in chunk {
                match row {
                    MappedRow::Builtin(row) => {
                        params.push(Value::from(row.event_id.as_ref()));
                        params.push(row.tracking_id.as_deref().map_or(Value::NULL, Value::from));
                        params.push(row.status.as_deref().map_or(Value::NULL, Value::from));
                        params.push(date_value(row.event_time));
                        params.push(Value::from(row.payload));
                        params.push(Value::from(&*rec.topic));
                        params.push(Value::from(rec.partition));
                        params.push(Value::from(rec.offset));
                        params.push(date_value(rec.timestamp_ms.and_then(DateTimeParts::from_unix_millis)));
                    }
                    MappedRow::Values(v) => params.extend(v.iter().cloned()),
                }
            }
            let stmt = self.statement(Target::Table(index), chunk.len());
            tx.exec_drop(&*stmt, params)
                .await
                .map_err(|e| classify(&format!("insert into `{}` failed", table.name), e))?;
            let affected = tx.affected_rows() as usize;
            let o = if upsert {
                sql::upsert_outcome(chunk.len(), affected, &tx.info())
            } else {
                BatchOutcome {
                    inserted: affected,
                    duplicates: chunk.len().saturating_sub(affected),
                    ..BatchOutcome::default()
                }
            };
            outcome += o;
        }
        Ok(outcome)
    }

    async fn insert_dead_letters(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        entries: &[DeadLetter],
    ) -> Result<(), SinkError> {
        let encoded: Vec<Vec<u8>> = entries.iter().map(|d| encode_record(&d.record)).collect();
        let plan = sql::plan_statements(
            encoded.iter().map(|e| e.len() * 2 + 512),
            sql::DEAD_LETTER_COLUMNS.len(),
            usize::MAX,
            self.max_statement_bytes,
        );
        for range in plan {
            let mut params = Vec::with_capacity(range.len() * sql::DEAD_LETTER_COLUMNS.len());
            for (d, enc) in entries[range.clone()].iter().zip(&encoded[range.clone()]) {
                let r = &d.record;
                params.push(Value::from(&*r.topic));
                params.push(Value::from(r.partition));
                params.push(Value::from(r.offset));
                params.push(date_value(r.timestamp_ms.and_then(DateTimeParts::from_unix_millis)));
                params.push(r.key.as_deref().map_or(Value::NULL, |k| Value::Bytes(k.to_vec())));
                params.push(r.payload.as_deref().map_or(Value::NULL, |p| Value::Bytes(p.to_vec())));
                params.push(Value::Bytes(enc.clone()));
                params.push(Value::from(d.error_class.as_str()));
                params.push(d.code.map_or(Value::NULL, Value::from));
                params.push(d.sqlstate.as_deref().map_or(Value::NULL, Value::from));
                params.push(Value::from(truncate(&d.reason, 60_000)));
            }
            let stmt = self.statement(Target::DeadLetters, range.len());
            tx.exec_drop(&*stmt, params)
                .await
                .map_err(|e| classify(&format!("insert into `{}` failed", self.dead_letter_table), e))?;
        }
        Ok(())
    }

    /// Which of `records` to write: not already stored (below its partition's watermark, or in
    /// a stored range), and not a second copy of an offset earlier in the same batch (a
    /// partition re-read after an eager rebalance can put both copies in one batch). Also
    /// returns the locked stored offsets, for [`advance_watermarks`](Self::advance_watermarks).
    async fn fresh_records(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        records: &[Record],
    ) -> Result<(Vec<bool>, Marks), SinkError> {
        let marks = self.lock_watermarks(tx, records).await?;
        let mut seen: HashSet<(&str, i32, i64)> = HashSet::with_capacity(records.len());
        let keep = records
            .iter()
            .map(|r| {
                let stored = marks
                    .get(&*r.topic)
                    .and_then(|ps| ps.get(&r.partition))
                    .is_some_and(|s| s.contains(r.offset));
                !stored && seen.insert((&*r.topic, r.partition, r.offset))
            })
            .collect();
        Ok((keep, marks))
    }

    /// Locks and reads the stored offsets of the partitions in `records`, for the transaction.
    async fn lock_watermarks(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        records: &[Record],
    ) -> Result<Marks, SinkError> {
        let Some(group) = &self.consumer_group else { return Ok(HashMap::new()) };
        let partitions: BTreeSet<(&str, i32)> = records.iter().map(|r| (&*r.topic, r.partition)).collect();
        let mut params: Vec<Value> = Vec::with_capacity(1 + partitions.len() * 2);
        params.push(Value::from(&**group));
        for (t, p) in &partitions {
            params.push(Value::from(*t));
            params.push(Value::from(*p));
        }
        let lock = sql::lock_offsets(&self.offsets_table, partitions.len());
        let found: Vec<OffsetsRow> =
            tx.exec(&lock, params.clone()).await.map_err(|e| classify("cannot lock offset watermarks", e))?;
        if found.len() < partitions.len() {
            // A partition seen for the first time has no row, and `FOR UPDATE` on a missing row
            // locks nothing under READ COMMITTED (two writers could both pass): seed the missing
            // rows, then lock again. Once seeded, a batch takes this one statement.
            let mut seed: Vec<Value> = Vec::with_capacity(partitions.len() * 3);
            for (t, p) in &partitions {
                seed.extend([Value::from(&**group), Value::from(*t), Value::from(*p)]);
            }
            tx.exec_drop(sql::seed_offsets(&self.offsets_table, partitions.len()), seed)
                .await
                .map_err(|e| classify("cannot seed offset watermarks", e))?;
            let relocked: Vec<OffsetsRow> =
                tx.exec(&lock, params).await.map_err(|e| classify("cannot lock offset watermarks", e))?;
            return collect_marks(relocked, &self.offsets_table);
        }
        collect_marks(found, &self.offsets_table)
    }

    /// Records what `records` cover as stored, in the rows `marks` locked: under
    /// [`WatermarkMode::Prefix`] each partition's watermark rises to one past its highest
    /// offset in `records`; under [`WatermarkMode::Ranges`] exactly what they cover is added.
    /// Never lowers a watermark.
    async fn advance_watermarks<'r>(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        records: impl IntoIterator<Item = &'r Record>,
        mut marks: Marks,
    ) -> Result<(), SinkError> {
        let Some(group) = &self.consumer_group else { return Ok(()) };
        let covered = stored::coverage(records, self.watermark_mode);
        if covered.is_empty() {
            return Ok(());
        }
        let mut params: Vec<Value> = Vec::with_capacity(covered.len() * 5);
        for ((t, p), ranges) in &covered {
            let Some(state) = marks.get_mut(*t).and_then(|ps| ps.get_mut(p)) else {
                return Err(SinkError::transient(format!(
                    "offset watermark row of {t}/{p} was not locked by this transaction"
                )));
            };
            stored::apply(state, ranges, self.watermark_mode);
            params.extend([
                Value::from(&**group),
                Value::from(*t),
                Value::from(*p),
                Value::from(state.next),
                state.ranges_text().map_or(Value::NULL, Value::from),
            ]);
        }
        tx.exec_drop(sql::advance_offsets(&self.offsets_table, self.syntax, covered.len()), params)
            .await
            .map_err(|e| classify("cannot advance offset watermarks", e))
    }

    /// The table `record` goes to, and its row there (or why it has none).
    fn map<'r>(
        &self,
        record: &'r Record,
        now: time::OffsetDateTime,
    ) -> (usize, Result<MappedRow<'r>, mapping::Rejection>) {
        let index =
            if self.routes.is_empty() { 0 } else { self.routes.get(&*record.topic).copied().unwrap_or(0) };
        let row = match &self.tables[index].shape {
            TableShape::Builtin => self.mapping.map(record).map(MappedRow::Builtin),
            TableShape::Columns(m) => m.map(record, now).map(MappedRow::Values),
        };
        (index, row)
    }

    /// A connection for one call, within `connect_timeout`, with the session settings applied.
    /// After a deadline was missed, connections the pool kept from before must answer a ping
    /// within a second, or are closed and passed over.
    async fn begin(&self) -> Result<mysql_async::Conn, SinkError> {
        let mut conn = self.connection().await?;
        let mut passed_over = 0;
        while self.suspect.load(std::sync::atomic::Ordering::Acquire) && passed_over <= self.max_connections {
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), conn.ping()).await {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.disconnect()).await;
            passed_over += 1;
            conn = self.connection().await?;
        }
        if let Some(session) = &self.session_each_call {
            match tokio::time::timeout(self.query_timeout, conn.query_drop(&**session)).await {
                Ok(set) => {
                    set.map_err(|e| classify("cannot set the mysql session (time zone, timeouts)", e))?
                }
                Err(_) => return Err(self.abandon(conn, "setting the session").await),
            }
        }
        Ok(conn)
    }

    async fn connection(&self) -> Result<mysql_async::Conn, SinkError> {
        match tokio::time::timeout(self.connect_timeout, self.pool.get_conn()).await {
            Ok(conn) => conn.map_err(|e| classify("cannot get a mysql connection", e)),
            Err(_) => {
                metrics::counter!("dp_mysql_timeouts_total", "call" => "connect").increment(1);
                Err(SinkError::transient(format!(
                    "cannot get a mysql connection: no answer within mysql.connect_timeout ({:?})",
                    self.connect_timeout
                )))
            }
        }
    }

    /// After a call on `conn` outlived `query_timeout`: closes the connection without waiting
    /// for the server, so it never goes back to the pool (it may be silent: no data, no FIN),
    /// and returns the transient error that makes the caller retry on a new one. A transaction
    /// left open on it is rolled back by the server when it notices (`wait_timeout`), or when
    /// the close reaches it.
    async fn abandon(&self, conn: mysql_async::Conn, what: &str) -> SinkError {
        metrics::counter!("dp_mysql_timeouts_total", "call" => "query").increment(1);
        self.suspect.store(true, std::sync::atomic::Ordering::Release);
        // `disconnect` marks the connection disconnected before any I/O, so even if sending
        // COM_QUIT blocks and is cut short here, the pool discards it instead of reusing it.
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.disconnect()).await;
        SinkError::transient(format!(
            "mysql did not answer within mysql.query_timeout ({:?}) while {what}; the connection was closed",
            self.query_timeout
        ))
    }
}

/// Keeps, of the rows sharing a key, the one an upsert would leave in the table
/// ([`ColumnMapping::winners`]), so one statement never updates a row twice.
fn winners<'a, 'r>(
    m: &ColumnMapping,
    rows: Vec<(&'a Record, MappedRow<'r>)>,
) -> Vec<(&'a Record, MappedRow<'r>)> {
    let values: Vec<&[Value]> = rows
        .iter()
        .map(|(_, row)| match row {
            MappedRow::Values(v) => v.as_slice(),
            MappedRow::Builtin(_) => &[],
        })
        .collect();
    let keep = m.winners(&values);
    rows.into_iter().zip(keep).filter_map(|(row, k)| k.then_some(row)).collect()
}

/// The locked stored offsets of a batch's partitions, by topic and partition.
type Marks = HashMap<String, HashMap<i32, Stored>>;

/// A row of the offsets table: topic, partition, watermark, ranges above it.
type OffsetsRow = (String, i32, i64, Option<String>);

/// The columns an offsets table must have.
const OFFSETS_COLUMNS: &[&str] =
    &["consumer_group", "topic", "kafka_partition", "next_offset", "stored_ranges"];

fn collect_marks(found: Vec<OffsetsRow>, table: &str) -> Result<Marks, SinkError> {
    let mut marks: Marks = HashMap::new();
    for (t, p, next, ranges) in found {
        // Retried, never dead-lettered: the batch is fine, the row is not (fix it by hand).
        let stored = Stored::parse(next, ranges.as_deref()).map_err(|e| {
            SinkError::transient(format!("`{table}`.stored_ranges of {t}/{p} is not readable: {e}"))
        })?;
        marks.entry(t).or_default().insert(p, stored);
    }
    Ok(marks)
}

/// Adds `stored_ranges` to an offsets table made by a release without it.
async fn add_stored_ranges(conn: &mut mysql_async::Conn, table: &str) -> Result<(), MysqlSinkError> {
    let has: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'stored_ranges'",
            (table,),
        )
        .await
        .map_err(|e| MysqlSinkError::Table { table: table.to_owned(), message: e.to_string() })?;
    if has.unwrap_or(0) == 0 {
        tracing::info!(table, "adding column stored_ranges to the offsets table");
        conn.query_drop(sql::add_stored_ranges_column(table))
            .await
            .map_err(|e| MysqlSinkError::Table { table: table.to_owned(), message: e.to_string() })?;
    }
    Ok(())
}

/// An offset (`+05:30`, `-08:00`), `SYSTEM`, or a zone name (`Europe/Paris`, `UTC`): what
/// `SET time_zone` takes, and never a quote.
fn is_time_zone(s: &str) -> bool {
    let b = s.as_bytes();
    let offset = b.len() == 6
        && matches!(b[0], b'+' | b'-')
        && b[1..3].iter().all(u8::is_ascii_digit)
        && b[3] == b':'
        && b[4..6].iter().all(u8::is_ascii_digit);
    let name = !s.is_empty()
        && s.len() <= 64
        && b[0].is_ascii_alphabetic()
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'_' | b'-' | b'+'));
    offset || name
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn date_value(t: Option<DateTimeParts>) -> Value {
    match t {
        Some(t) => Value::Date(t.year, t.month, t.day, t.hour, t.minute, t.second, t.micros),
        None => Value::NULL,
    }
}

async fn check_columns(
    conn: &mut mysql_async::Conn,
    table: &str,
    required: &[&str],
) -> Result<(), MysqlSinkError> {
    let found: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (table,),
        )
        .await
        .map_err(|e| MysqlSinkError::Table { table: table.to_owned(), message: e.to_string() })?;
    if found.is_empty() {
        return Err(MysqlSinkError::Table {
            table: table.to_owned(),
            message: "table does not exist; run `delivery-pipeline migrate` or set mysql.create_table = true"
                .into(),
        });
    }
    let missing: Vec<&str> =
        required.iter().copied().filter(|c| !found.iter().any(|f| f.eq_ignore_ascii_case(c))).collect();
    if !missing.is_empty() {
        return Err(MysqlSinkError::Table {
            table: table.to_owned(),
            message: format!(
                "missing columns {missing:?}; see `delivery-pipeline migrate --dry-run` for the expected shape"
            ),
        });
    }
    Ok(())
}

#[async_trait]
impl Watermarks for MysqlSink {
    async fn next_offsets(&self, partitions: &[(String, i32)]) -> Result<Vec<(String, i32, i64)>, SinkError> {
        self.watermarks(partitions).await
    }
}

#[async_trait]
impl Sink for MysqlSink {
    async fn write_batch(&self, records: &[Record]) -> Result<BatchOutcome, SinkError> {
        if records.is_empty() {
            return Ok(BatchOutcome::default());
        }
        // Map outside the transaction, to hold the watermark locks briefly.
        let now = time::OffsetDateTime::now_utc();
        let mapped: Vec<(usize, Result<MappedRow<'_>, mapping::Rejection>)> =
            records.iter().map(|r| self.map(r, now)).collect();
        let mut conn = self.begin().await?;
        match tokio::time::timeout(self.query_timeout, self.write_in(&mut conn, records, mapped)).await {
            Ok(outcome) => {
                if outcome.is_ok() {
                    self.suspect.store(false, std::sync::atomic::Ordering::Release);
                }
                outcome
            }
            Err(_) => Err(self.abandon(conn, "writing a batch").await),
        }
    }

    async fn dead_letter(&self, entries: &[DeadLetter]) -> Result<(), SinkError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.begin().await?;
        match tokio::time::timeout(self.query_timeout, self.dead_letter_in(&mut conn, entries)).await {
            Ok(stored) => stored,
            Err(_) => Err(self.abandon(conn, "writing dead letters").await),
        }
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        let mut conn = self.begin().await?;
        match tokio::time::timeout(self.query_timeout, conn.ping()).await {
            Ok(pong) => pong.map_err(|e| classify("mysql ping failed", e)),
            Err(_) => Err(self.abandon(conn, "answering a ping").await),
        }
    }

    async fn close(&self) -> Result<(), SinkError> {
        if !self.owns_pool {
            return Ok(());
        }
        self.pool.clone().disconnect().await.map_err(|e| classify("closing the mysql pool failed", e))
    }
}

impl MysqlSink {
    /// One batch's transaction on `conn`: skip what is stored, write rows and dead letters,
    /// record the offsets, commit. [`Sink::write_batch`] bounds it by `query_timeout`.
    async fn write_in<'r>(
        &self,
        conn: &mut mysql_async::Conn,
        records: &'r [Record],
        mapped: Vec<(usize, Result<MappedRow<'r>, mapping::Rejection>)>,
    ) -> Result<BatchOutcome, SinkError> {
        let mut tx = conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(|e| classify("cannot start a transaction", e))?;
        let (keep, marks) = self.fresh_records(&mut tx, records).await?;
        let mut per_table: Vec<Vec<(&Record, MappedRow<'_>)>> =
            (0..self.tables.len()).map(|_| Vec::new()).collect();
        let mut rejected = Vec::new();
        for ((r, (table, m)), keep) in records.iter().zip(mapped).zip(keep) {
            if !keep {
                continue;
            }
            match m {
                Ok(row) => per_table[table].push((r, row)),
                Err(rej) => rejected.push(DeadLetter {
                    record: r.clone(),
                    error_class: rej.class.to_owned(),
                    code: None,
                    sqlstate: None,
                    reason: rej.reason,
                }),
            }
        }
        let mut outcome = BatchOutcome::default();
        for (index, rows) in per_table.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let rows = match &self.tables[index].shape {
                TableShape::Columns(m) if m.mode == WriteMode::Upsert => winners(m, rows),
                _ => rows,
            };
            outcome += self.write_rows(&mut tx, index, &rows).await?;
        }
        self.store_dead_letters(&mut tx, &rejected).await?;
        self.advance_watermarks(&mut tx, records, marks).await?;
        tx.commit().await.map_err(|e| classify("commit failed", e))?;
        for d in &rejected {
            metrics::counter!("dp_dead_lettered_total", "class" => d.error_class.clone()).increment(1);
        }
        outcome.dead_lettered = rejected.len();
        // Records below the watermark, second copies, and upserts that lost within the batch.
        outcome.duplicates =
            records.len().saturating_sub(outcome.inserted + outcome.updated + outcome.dead_lettered);
        Ok(outcome)
    }

    /// Dead letters' transaction on `conn` (the watermark path of rule 2 included).
    async fn dead_letter_in(
        &self,
        conn: &mut mysql_async::Conn,
        entries: &[DeadLetter],
    ) -> Result<(), SinkError> {
        let mut tx = conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(|e| classify("cannot start a transaction", e))?;
        let records: Vec<Record> = entries.iter().map(|d| d.record.clone()).collect();
        let (keep, marks) = self.fresh_records(&mut tx, &records).await?;
        let fresh: Vec<DeadLetter> =
            entries.iter().zip(keep).filter(|(_, k)| *k).map(|(d, _)| d.clone()).collect();
        self.store_dead_letters(&mut tx, &fresh).await?;
        self.advance_watermarks(&mut tx, &records, marks).await?;
        tx.commit().await.map_err(|e| classify("commit failed", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
