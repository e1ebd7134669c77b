//! The `[mysql]` settings: where MySQL is, the tables (built-in or declared columns, routes),
//! timeouts, TLS and the session; their validation and the DDL they imply.

use crate::error::MysqlSinkError;
use crate::sql;
use std::path::PathBuf;
use std::time::Duration;

use dp_core::{SecretUrl, TlsConfig, TlsVerify};
use dp_schema_registry::Format;
use mysql_async::{ClientIdentity, Opts, OptsBuilder, SslOpts};
use serde::{Deserialize, Serialize};

use crate::mapping::{ColumnConfig, ColumnMapping, WriteConfig, WriteMode};
use crate::sql::Ident;

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
    /// How the values of the topics written to `table` are encoded: `json` (plain JSON), or
    /// through the Schema Registry (`[schema_registry]`): `avro`, `protobuf`, `json_schema`.
    /// Decoded values are read as JSON by the columns.
    pub format: Format,
    /// How their keys are encoded (for `kafka_key` columns and deletes): `json` (plain text or
    /// JSON), `avro`, `protobuf`, `json_schema`.
    pub key_format: Format,
}

/// One topic written to its own table (`[[mysql.routes]]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// How the topic's values are encoded (as `mysql.format`).
    #[serde(default)]
    pub format: Format,
    /// How the topic's keys are encoded (as `mysql.key_format`).
    #[serde(default)]
    pub key_format: Format,
}

/// One destination table: its name, its mapping, and the topic routed to it (`None` for the
/// default table, `mysql.table`).
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Settings path, for messages (`mysql`, `mysql.routes[0]`).
    pub at: String,
    /// Routed topic; `None` for the default table.
    pub topic: Option<String>,
    /// The table.
    pub table: Ident,
    /// Its columns and write mode: declared, or the built-in preset.
    pub mapping: ColumnMapping,
    /// How its records' values are encoded.
    pub format: Format,
    /// How its records' keys are encoded.
    pub key_format: Format,
}

impl TableSpec {
    /// `CREATE TABLE IF NOT EXISTS` for this table.
    pub fn create_table(&self) -> String {
        self.mapping.create_table(&self.table)
    }
}

/// `name` as an identifier, or an error naming the setting `at`.
pub(crate) fn ident(at: &str, name: &str) -> Result<Ident, String> {
    Ident::new(name).ok_or_else(|| {
        format!("{at}: `{name}` is not a plain identifier (1-64 of [A-Za-z0-9_], not starting with a digit)")
    })
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
            format: Format::Json,
            key_format: Format::Json,
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
        if Ident::new(&self.table).is_none() {
            return Err(format!(
                "mysql.table: `{}` is not a plain identifier (1-64 of [A-Za-z0-9_], not starting with a digit)",
                self.table
            ));
        }
        if Ident::new(&self.dead_letter_table()).is_none() {
            return Err(format!(
                "mysql.dead_letter_table: `{}` is not a plain identifier (1-64 of [A-Za-z0-9_]); set it explicitly",
                self.dead_letter_table()
            ));
        }
        if Ident::new(&self.offsets_table).is_none() {
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
        let mapping = |at: &str,
                       columns: &[ColumnConfig],
                       write: &WriteConfig|
         -> Result<ColumnMapping, String> {
            if !columns.is_empty() {
                return ColumnMapping::compile(at, columns, write, self.max_payload_bytes);
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
            ColumnMapping::builtin(&self.event_id_field, self.max_payload_bytes)
        };
        let mut out = vec![TableSpec {
            at: "mysql".into(),
            topic: None,
            table: ident("mysql.table", &self.table)?,
            mapping: mapping("mysql", &self.columns, &self.write)?,
            format: self.format,
            key_format: self.key_format,
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
            let table = ident(&format!("{at}.table"), &r.table)?;
            if reserved.iter().any(|t| t.eq_ignore_ascii_case(&r.table)) {
                return Err(format!("{at}.table: `{}` is the dead-letter or offsets table", r.table));
            }
            if out.iter().any(|t| t.table.as_str().eq_ignore_ascii_case(&r.table)) {
                return Err(format!(
                    "{at}.table: `{}` is already the table of another route or the default table; give each its own",
                    r.table
                ));
            }
            out.push(TableSpec {
                at: at.clone(),
                topic: Some(r.topic.clone()),
                table,
                mapping: mapping(&at, &r.columns, &r.write)?,
                format: r.format,
                key_format: r.key_format,
            });
        }
        Ok(out)
    }

    /// The settings keys (`mysql.format`, `mysql.routes[1].key_format`) of the formats read
    /// through the Schema Registry: empty when no table needs one.
    pub fn registry_formats(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |at: &str, format: Format, key_format: Format| {
            if format.needs_registry() {
                out.push(format!("{at}.format"));
            }
            if key_format.needs_registry() {
                out.push(format!("{at}.key_format"));
            }
        };
        add("mysql", self.format, self.key_format);
        for (i, r) in self.routes.iter().enumerate() {
            add(&format!("mysql.routes[{i}]"), r.format, r.key_format);
        }
        out
    }

    /// The statements `migrate` runs (`migrate --dry-run` prints them).
    pub fn ddl(&self) -> Result<Vec<String>, String> {
        let mut out: Vec<String> = self.tables()?.iter().map(TableSpec::create_table).collect();
        out.push(sql::create_dead_letter_table(&ident(
            "mysql.dead_letter_table",
            &self.dead_letter_table(),
        )?));
        out.push(sql::create_offsets_table(&ident("mysql.offsets_table", &self.offsets_table)?));
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

/// An offset (`+05:30`, `-08:00`), `SYSTEM`, or a zone name (`Europe/Paris`, `UTC`): what
/// `SET time_zone` takes, and never a quote.
pub(crate) fn is_time_zone(s: &str) -> bool {
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
