//! A PostgreSQL [`Sink`]: the same pipeline as the MySQL sink's, another database, through the
//! same trait.
//!
//! # What a batch becomes
//! [`PostgresSink::write_batch`] writes a batch in **one transaction**:
//!
//! - Every record whose payload is a JSON object becomes a row of `<table>`. All rows go in one
//!   fixed statement, `INSERT … SELECT … FROM unnest($1::text[], …) ON CONFLICT DO NOTHING`:
//!   one parameter per column, whatever the batch size, so the statement is prepared once per
//!   connection and never runs into PostgreSQL's 65,535-parameter limit.
//! - Every other record (a tombstone, bytes that are not UTF-8, text that is not JSON, JSON that
//!   is not an object, a mapped field of the wrong type) is written to `<table>_dead_letter`
//!   with a machine-readable class and a reason, in the same transaction.
//!
//! The transaction commits before `write_batch` returns `Ok`, so `Ok` means every record of the
//! batch is durable: a row, already a row, or a dead-letter entry. An error means nothing of
//! the batch was committed, except in one case: the connection dies after `COMMIT` was sent
//! but before its answer arrived. The batch is then retried, and idempotency makes that safe.
//!
//! # Idempotency
//! A row's primary key is `event_id`: the payload's `event_id` string, or, without one, the
//! record's coordinates `topic/partition/offset`. The coordinates are unique as well. A record
//! written again (a replayed batch, a restore from Redis, a redelivery after a rebalance, a
//! producer's duplicate) conflicts and is skipped: `ON CONFLICT DO NOTHING` without a conflict
//! target covers both keys. The rows the statement reports are counted as
//! [`inserted`](BatchOutcome::inserted), the rest of the valid records as
//! [`duplicates`](BatchOutcome::duplicates). Dead-letter entries are keyed by coordinates and
//! written the same way.
//!
//! # Errors
//! A server error whose SQLSTATE is of class 22 (data exception) or 23 (integrity constraint
//! violation) is about the data: [permanent](dp_core::ErrorKind::Permanent). The runtime then
//! halves the batch until the refused records are isolated and hands them to
//! [`Sink::dead_letter`]. Everything else — a lost connection, a timeout, a server restarting,
//! a serialization failure, even a missing table — is [transient](dp_core::ErrorKind::Transient):
//! the runtime retries the same batch with backoff. Any failure other than the server refusing
//! one statement drops the connection; the next call opens a new one, so the sink recovers on
//! its own once the database is back.
//!
//! The sink holds one connection: the runtime writes one batch at a time. TLS is not
//! configured (`NoTls`): for a server beyond localhost, put a TLS connector in
//! [`PostgresSink::connect`].
//!
//! # Use
//! The pipeline of `delivery-pipeline run` with this sink in place of MySQL's:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use example_postgres_sink::PostgresSink;
//!
//! let sink = PostgresSink::connect("postgres://postgres@127.0.0.1:5432/test", "delivery_events").await?;
//! let mut config = dp_assembly::Config::default();
//! config.instance_id = "postgres-sink-0".into();
//! config.kafka.topics = vec!["delivery-events".into()];
//! let pipeline = dp_assembly::PipelineBuilder::new(config).sink(Arc::new(sink)).build().await?;
//! let summary = pipeline.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! println!("{} rows inserted", summary.stats.inserted);
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use dp_core::{BatchOutcome, DeadLetter, Record, Sink, SinkError, encode_record};
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

pub use tokio_postgres;

/// How long connecting may take when the URL sets no `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one batch's transaction (or one dead-letter write, or a health check) may take
/// before it is abandoned as a transient failure and the connection is dropped.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest table name: PostgreSQL names are at most 63 bytes, and `_dead_letter` is added.
pub const TABLE_NAME_MAX: usize = 63 - "_dead_letter".len();

/// Errors of [`PostgresSink::connect`]; once connected, failures are [`SinkError`]s.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresSinkError {
    /// The connection URL could not be parsed. The URL is not repeated: it may hold a password.
    #[error("postgres url is invalid: {source}")]
    Url {
        /// The parser's error.
        source: tokio_postgres::Error,
    },
    /// The table name is not one this sink creates.
    #[error(
        "table name `{table}` is not a plain lowercase identifier (1-{TABLE_NAME_MAX} of [a-z0-9_], not starting with a digit)"
    )]
    TableName {
        /// The refused name.
        table: String,
    },
    /// Connecting or preparing the statements failed.
    #[error("cannot connect to postgres at {target}: {message}")]
    Connect {
        /// `user@host:port/database`, without the password.
        target: String,
        /// What went wrong.
        message: String,
    },
    /// Creating the tables failed.
    #[error("cannot create table `{table}`: {message}")]
    Table {
        /// The table.
        table: String,
        /// What went wrong.
        message: String,
    },
}

/// Writes records to a PostgreSQL table, idempotently, one transaction per batch.
///
/// See the [crate documentation](crate) for the table layout, idempotency and error classes.
pub struct PostgresSink {
    config: tokio_postgres::Config,
    target: String,
    table: String,
    dead_letter_table: String,
    sql: Sql,
    operation_timeout: Duration,
    /// The open connection; `None` after a failure, reopened by the next call.
    session: Mutex<Option<Session>>,
}

impl fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSink")
            .field("target", &self.target)
            .field("table", &self.table)
            .field("operation_timeout", &self.operation_timeout)
            .finish_non_exhaustive()
    }
}

/// One connection with its prepared statements.
struct Session {
    client: Client,
    insert: Statement,
    dead_letter: Statement,
}

impl PostgresSink {
    /// Connects to `url` (`postgres://user[:password]@host:port/database`, or a `key=value`
    /// string), creates `table` and `<table>_dead_letter` if they are missing, and prepares the
    /// statements.
    pub async fn connect(url: &str, table: &str) -> Result<Self, PostgresSinkError> {
        if !is_table_name(table) {
            return Err(PostgresSinkError::TableName { table: table.to_owned() });
        }
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|source| PostgresSinkError::Url { source })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("delivery-pipeline");
        }
        let target = describe(&config);
        let dead_letter_table = format!("{table}_dead_letter");
        let sink = Self {
            sql: Sql::new(table, &dead_letter_table),
            config,
            target,
            table: table.to_owned(),
            dead_letter_table,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            session: Mutex::new(None),
        };
        let connect_err = |e: tokio_postgres::Error| PostgresSinkError::Connect {
            target: sink.target.clone(),
            message: describe_error(&e),
        };
        let (mut client, connection) = sink.config.connect(NoTls).await.map_err(connect_err)?;
        tokio::spawn(drive(connection));
        sink.create_tables(&mut client).await.map_err(|e| PostgresSinkError::Table {
            table: sink.table.clone(),
            message: describe_error(&e),
        })?;
        let session = Session::prepare(client, &sink.sql).await.map_err(connect_err)?;
        *sink.session.lock().await = Some(session);
        tracing::info!(server = %sink.target, table = %sink.table, "postgres sink connected");
        Ok(sink)
    }

    /// Gives each transaction, dead-letter write and health check `timeout` instead of
    /// [`DEFAULT_OPERATION_TIMEOUT`].
    #[must_use]
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// The table rows go to.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The table dead letters go to: `<table>_dead_letter`.
    pub fn dead_letter_table(&self) -> &str {
        &self.dead_letter_table
    }

    /// Both `CREATE TABLE IF NOT EXISTS`, under an advisory lock: concurrent creations of the
    /// same table race on the catalog otherwise.
    async fn create_tables(&self, client: &mut Client) -> Result<(), tokio_postgres::Error> {
        let tx = client.transaction().await?;
        // No "relation already exists, skipping" notice on every start.
        tx.batch_execute("SET LOCAL client_min_messages = warning").await?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1::text))", &[&self.table]).await?;
        tx.batch_execute(&self.sql.create_table).await?;
        tx.batch_execute(&self.sql.create_dead_letter_table).await?;
        tx.commit().await
    }

    /// The open session, or a new one when there is none or it died.
    async fn session<'s>(&self, slot: &'s mut Option<Session>) -> Result<&'s mut Session, SinkError> {
        match slot.take() {
            Some(s) if !s.client.is_closed() => Ok(slot.insert(s)),
            _ => {
                let opened = tokio::time::timeout(self.operation_timeout, async {
                    let (client, connection) = self.config.connect(NoTls).await?;
                    tokio::spawn(drive(connection));
                    Session::prepare(client, &self.sql).await
                })
                .await;
                match opened {
                    Ok(Ok(session)) => {
                        tracing::info!(server = %self.target, "postgres sink reconnected");
                        Ok(slot.insert(session))
                    }
                    Ok(Err(e)) => Err(classify(&format!("cannot connect to postgres at {}", self.target), e)),
                    Err(_) => Err(SinkError::transient(format!(
                        "cannot connect to postgres at {}: no answer within {:?}",
                        self.target, self.operation_timeout
                    ))),
                }
            }
        }
    }

    /// Runs `op` on the session under the operation timeout; drops the connection after any
    /// failure but the server's refusal of one statement.
    async fn run<T>(
        &self,
        what: &str,
        op: impl AsyncFnOnce(&mut Session) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, SinkError> {
        let mut slot = self.session.lock().await;
        let session = self.session(&mut slot).await?;
        match tokio::time::timeout(self.operation_timeout, op(session)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if !connection_survives(&e) || slot.as_ref().is_none_or(|s| s.client.is_closed()) {
                    *slot = None;
                }
                Err(classify(what, e))
            }
            Err(_) => {
                // The server may still be working on it; closing the connection rolls it back.
                *slot = None;
                Err(SinkError::transient(format!("{what}: no answer within {:?}", self.operation_timeout)))
            }
        }
    }
}

/// Whether the connection is still usable after `e`: the server answered with an error that
/// ends the statement, not the session (a `FATAL` such as `pg_terminate_backend`'s 57P01 ends
/// both, and the connection closes right after it).
fn connection_survives(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::Severity;
    e.as_db_error().is_some_and(|db| {
        !matches!(db.parsed_severity(), Some(Severity::Fatal | Severity::Panic))
            && !db.code().code().starts_with("57P")
            && !db.code().code().starts_with("08")
    })
}

/// Runs a connection's I/O until the client is dropped or the connection fails.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!(error = %describe_error(&e), "postgres connection ended");
    }
}

impl Session {
    async fn prepare(client: Client, sql: &Sql) -> Result<Self, tokio_postgres::Error> {
        let insert = client.prepare(&sql.insert).await?;
        let dead_letter = client.prepare(&sql.dead_letter).await?;
        Ok(Self { client, insert, dead_letter })
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn write_batch(&self, records: &[Record]) -> Result<BatchOutcome, SinkError> {
        if records.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let mut rows = Rows::default();
        let mut rejected = DeadLetterRows::default();
        // Counted by class in the runtime's `dp_dead_lettered_total` once the batch commits.
        let mut outcome = BatchOutcome::default();
        for record in records {
            match mapping::map(record) {
                Ok(row) => rows.push(record, row),
                Err(r) => {
                    outcome.dead_letter(r.class);
                    rejected.push(record, r.class, &r.reason, None);
                }
            }
        }
        let what = format!("write of {} records to \"{}\"", records.len(), self.table);
        let inserted = self
            .run(&what, async |s: &mut Session| {
                let tx = s.client.transaction().await?;
                let inserted =
                    if rows.is_empty() { 0 } else { tx.execute(&s.insert, &rows.params()).await? };
                if !rejected.is_empty() {
                    tx.execute(&s.dead_letter, &rejected.params()).await?;
                }
                tx.commit().await?;
                Ok(inserted)
            })
            .await?;
        let inserted = usize::try_from(inserted).unwrap_or(usize::MAX).min(rows.len());
        tracing::debug!(rows = records.len(), inserted, dead_lettered = outcome.dead_lettered, table = %self.table, "batch written");
        outcome.inserted = inserted;
        outcome.duplicates = rows.len() - inserted;
        Ok(outcome)
    }

    async fn dead_letter(&self, entries: &[DeadLetter]) -> Result<(), SinkError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut rows = DeadLetterRows::default();
        for e in entries {
            rows.push(&e.record, &e.error_class, &e.reason, e.sqlstate.as_deref());
        }
        let what = format!("write of {} dead letters to \"{}\"", entries.len(), self.dead_letter_table);
        self.run(&what, async |s: &mut Session| {
            s.client.execute(&s.dead_letter, &rows.params()).await.map(drop)
        })
        .await
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        let what = format!("health check of postgres at {}", self.target);
        self.run(&what, async |s: &mut Session| s.client.simple_query("SELECT 1").await.map(drop)).await
    }

    async fn close(&self) -> Result<(), SinkError> {
        // Dropping the client ends the connection task.
        self.session.lock().await.take();
        Ok(())
    }
}

/// Whether `state` (a SQLSTATE) reports bad data rather than a failing database: class 22
/// (data exception) or 23 (integrity constraint violation).
pub fn is_permanent_sqlstate(state: &str) -> bool {
    state.starts_with("22") || state.starts_with("23")
}

/// Maps a client error to the trait boundary's error, with the retry hint.
fn classify(context: &str, e: tokio_postgres::Error) -> SinkError {
    match e.as_db_error() {
        Some(db) => {
            let state = db.code().code();
            let message = format!("{context} (sqlstate {state})");
            let base = if is_permanent_sqlstate(state) {
                SinkError::permanent(message)
            } else {
                SinkError::transient(message)
            };
            // The server's own error displays its message, detail and hint.
            base.with_sqlstate(state).with_source(db.clone())
        }
        None => SinkError::transient(format!("{context}: {}", describe_error(&e))).with_source(e),
    }
}

/// The error with its causes, `a: b: c` (the client's own message is often just "db error").
fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// `user@host:port/database`, never the password.
fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            let port = config.get_ports().get(i).or(config.get_ports().first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let user = config.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    format!("{user}{}/{}", hosts.join(","), config.get_dbname().unwrap_or(""))
}

/// Whether this sink accepts `name` as its table: a lowercase identifier that needs no
/// quoting and leaves room for the `_dead_letter` suffix.
pub fn is_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= TABLE_NAME_MAX
}

/// The statement texts, fixed per table.
struct Sql {
    create_table: String,
    create_dead_letter_table: String,
    insert: String,
    dead_letter: String,
}

impl Sql {
    fn new(table: &str, dead_letter_table: &str) -> Self {
        Self {
            create_table: format!(
                r#"CREATE TABLE IF NOT EXISTS "{table}" (
    event_id text NOT NULL PRIMARY KEY,
    tracking_id text,
    status text,
    event_time timestamptz,
    payload jsonb NOT NULL,
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    kafka_timestamp timestamptz,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kafka_topic, kafka_partition, kafka_offset)
)"#
            ),
            create_dead_letter_table: format!(
                r#"CREATE TABLE IF NOT EXISTS "{dead_letter_table}" (
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    kafka_key bytea,
    kafka_timestamp timestamptz,
    payload bytea,
    record bytea NOT NULL,
    error_class text NOT NULL,
    reason text NOT NULL,
    sqlstate text,
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset)
)"#
            ),
            // Timestamps travel as RFC 3339 text: exact, and with no type feature needed.
            insert: format!(
                r#"INSERT INTO "{table}"
    (event_id, tracking_id, status, event_time, payload, kafka_topic, kafka_partition, kafka_offset, kafka_timestamp)
SELECT id, tracking, status, event_time::timestamptz, payload::jsonb, topic, part, off, ts::timestamptz
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[], $8::int8[], $9::text[])
    AS r(id, tracking, status, event_time, payload, topic, part, off, ts)
ON CONFLICT DO NOTHING"#
            ),
            dead_letter: format!(
                r#"INSERT INTO "{dead_letter_table}"
    (kafka_topic, kafka_partition, kafka_offset, kafka_key, kafka_timestamp, payload, record, error_class, reason, sqlstate)
SELECT topic, part, off, key, ts::timestamptz, payload, record, class, reason, state
FROM unnest($1::text[], $2::int4[], $3::int8[], $4::bytea[], $5::text[], $6::bytea[], $7::bytea[], $8::text[], $9::text[], $10::text[])
    AS d(topic, part, off, key, ts, payload, record, class, reason, state)
ON CONFLICT DO NOTHING"#
            ),
        }
    }
}

/// The batch's rows, column by column: one array parameter each.
#[derive(Default)]
struct Rows<'a> {
    event_id: Vec<String>,
    tracking_id: Vec<Option<String>>,
    status: Vec<Option<String>>,
    event_time: Vec<Option<String>>,
    payload: Vec<&'a str>,
    topic: Vec<&'a str>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    kafka_timestamp: Vec<Option<String>>,
}

impl<'a> Rows<'a> {
    fn push(&mut self, record: &'a Record, row: mapping::Row<'a>) {
        self.event_id.push(row.event_id);
        self.tracking_id.push(row.tracking_id);
        self.status.push(row.status);
        self.event_time.push(row.event_time);
        self.payload.push(row.payload);
        self.topic.push(&record.topic);
        self.partition.push(record.partition);
        self.offset.push(record.offset);
        self.kafka_timestamp.push(record.timestamp_ms.and_then(mapping::rfc3339_from_millis));
    }

    fn len(&self) -> usize {
        self.payload.len()
    }

    fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.event_id,
            &self.tracking_id,
            &self.status,
            &self.event_time,
            &self.payload,
            &self.topic,
            &self.partition,
            &self.offset,
            &self.kafka_timestamp,
        ]
    }
}

/// Dead-letter entries, column by column.
#[derive(Default)]
struct DeadLetterRows<'a> {
    topic: Vec<&'a str>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    key: Vec<Option<&'a [u8]>>,
    timestamp: Vec<Option<String>>,
    payload: Vec<Option<&'a [u8]>>,
    record: Vec<Vec<u8>>,
    class: Vec<String>,
    reason: Vec<String>,
    sqlstate: Vec<Option<String>>,
}

impl<'a> DeadLetterRows<'a> {
    fn push(&mut self, record: &'a Record, class: &str, reason: &str, sqlstate: Option<&str>) {
        self.topic.push(&record.topic);
        self.partition.push(record.partition);
        self.offset.push(record.offset);
        self.key.push(record.key.as_deref());
        self.timestamp.push(record.timestamp_ms.and_then(mapping::rfc3339_from_millis));
        self.payload.push(record.payload.as_deref());
        self.record.push(encode_record(record));
        self.class.push(text(class));
        self.reason.push(text(reason));
        self.sqlstate.push(sqlstate.map(text));
    }

    fn is_empty(&self) -> bool {
        self.topic.is_empty()
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.topic,
            &self.partition,
            &self.offset,
            &self.key,
            &self.timestamp,
            &self.payload,
            &self.record,
            &self.class,
            &self.reason,
            &self.sqlstate,
        ]
    }
}

/// `s` as PostgreSQL `text` takes it: without NUL characters.
fn text(s: &str) -> String {
    s.replace('\0', "\u{fffd}")
}

pub mod mapping {
    //! From a record to a row. The payload is parsed once, here, so that records PostgreSQL
    //! would refuse are dead-lettered with a precise class instead of failing the batch.
    //!
    //! The expected payload is a JSON object such as
    //! `{"event_id": "…", "tracking_id": "…", "status": "IN_TRANSIT", "event_time": "2026-11-24T10:15:30.123Z"}`.
    //! Every field is optional (`null` counts as absent); other fields are kept in the stored
    //! payload.

    use dp_core::Record;
    use serde_json::Value;
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    /// The longest `event_id`, in bytes: a B-tree index entry must fit in a third of a page.
    pub const EVENT_ID_MAX_BYTES: usize = 512;

    /// The columns of one row taken from the payload.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Row<'a> {
        /// Idempotency key: the payload's `event_id`, else `topic/partition/offset`.
        pub event_id: String,
        /// The payload's `tracking_id`.
        pub tracking_id: Option<String>,
        /// The payload's `status`.
        pub status: Option<String>,
        /// The payload's `event_time`, normalised to RFC 3339 in UTC.
        pub event_time: Option<String>,
        /// The whole payload, verbatim.
        pub payload: &'a str,
    }

    /// Why a record cannot become a row. `class` is stable and machine-readable.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Rejection {
        /// `null_value`, `empty_value`, `not_utf8`, `invalid_json`, `not_an_object`,
        /// `invalid_field`, `field_too_long`, `invalid_timestamp` or `nul_character`.
        pub class: &'static str,
        /// Human-readable detail.
        pub reason: String,
    }

    fn reject(class: &'static str, reason: impl Into<String>) -> Rejection {
        Rejection { class, reason: reason.into() }
    }

    /// Maps `record` to a row, or says why it cannot be stored.
    pub fn map(record: &Record) -> Result<Row<'_>, Rejection> {
        let bytes = match &record.payload {
            None => return Err(reject("null_value", "message value is null (a tombstone)")),
            Some(b) if b.is_empty() => return Err(reject("empty_value", "message value is empty")),
            Some(b) => b,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| {
            reject("not_utf8", format!("message value is not UTF-8 (invalid byte at {})", e.valid_up_to()))
        })?;
        let value: Value = serde_json::from_str(text)
            .map_err(|e| reject("invalid_json", format!("message value is not JSON: {e}")))?;
        let Value::Object(object) = &value else {
            return Err(reject("not_an_object", "message value is JSON but not an object"));
        };
        // PostgreSQL's text and jsonb cannot hold U+0000, which JSON can escape.
        if has_nul(&value) {
            return Err(reject(
                "nul_character",
                "message value contains \\u0000, which PostgreSQL text and jsonb cannot hold",
            ));
        }
        let event_id = match string_field(object, "event_id")? {
            Some(id) if id.trim().is_empty() => {
                return Err(reject("invalid_field", "field `event_id` is empty"));
            }
            Some(id) if id.len() > EVENT_ID_MAX_BYTES => {
                return Err(reject(
                    "field_too_long",
                    format!("field `event_id` is {} bytes, the limit is {EVENT_ID_MAX_BYTES}", id.len()),
                ));
            }
            Some(id) => id.to_owned(),
            None => format!("{}/{}/{}", record.topic, record.partition, record.offset),
        };
        let tracking_id = string_field(object, "tracking_id")?.map(str::to_owned);
        let status = string_field(object, "status")?.map(str::to_owned);
        let event_time = string_field(object, "event_time")?.map(parse_time).transpose()?;
        Ok(Row { event_id, tracking_id, status, event_time, payload: text })
    }

    /// A field that must be a string when present and not null.
    fn string_field<'v>(
        object: &'v serde_json::Map<String, Value>,
        name: &str,
    ) -> Result<Option<&'v str>, Rejection> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(reject("invalid_field", format!("field `{name}` must be a string"))),
        }
    }

    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }

    fn parse_time(v: &str) -> Result<String, Rejection> {
        OffsetDateTime::parse(v, &Rfc3339).ok().and_then(rfc3339_utc).ok_or_else(|| {
            reject(
                "invalid_timestamp",
                format!("field `event_time` `{v}` is not an RFC 3339 date-time in years 1-9999"),
            )
        })
    }

    /// `t` in UTC as RFC 3339, if its year is one PostgreSQL and RFC 3339 share (1-9999).
    fn rfc3339_utc(t: OffsetDateTime) -> Option<String> {
        let t = t.to_offset(time::UtcOffset::UTC);
        if !(1..=9999).contains(&t.year()) {
            return None;
        }
        t.format(&Rfc3339).ok()
    }

    /// A Kafka timestamp (milliseconds since the Unix epoch) as RFC 3339, if representable.
    pub fn rfc3339_from_millis(ms: i64) -> Option<String> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok().and_then(rfc3339_utc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(payload: Option<&[u8]>) -> Record {
        Record::new("orders", 3, 42, payload.map(<[u8]>::to_vec))
    }

    fn class(payload: Option<&[u8]>) -> &'static str {
        mapping::map(&rec(payload)).expect_err("must be refused").class
    }

    #[test]
    fn a_delivery_event_maps_to_its_columns() {
        let payload = br#"{"event_id":"e-1","tracking_id":"TRK\u00e91","status":"DELIVERED","event_time":"2026-11-24T12:15:30.123+02:00","extra":[1,{"a":null}]}"#;
        let record = rec(Some(payload));
        let row = mapping::map(&record).expect("maps");
        assert_eq!(row.event_id, "e-1");
        assert_eq!(row.tracking_id.as_deref(), Some("TRKé1"), "escapes are decoded");
        assert_eq!(row.status.as_deref(), Some("DELIVERED"));
        assert_eq!(row.event_time.as_deref(), Some("2026-11-24T10:15:30.123Z"), "normalised to UTC");
        assert_eq!(row.payload.as_bytes(), payload, "the payload is kept verbatim");
    }

    #[test]
    fn without_an_event_id_the_coordinates_are_the_key() {
        for payload in [&br#"{"status":"AT_HUB"}"#[..], br#"{"event_id":null}"#] {
            let record = rec(Some(payload));
            let row = mapping::map(&record).expect("maps");
            assert_eq!(row.event_id, "orders/3/42");
            assert_eq!((row.tracking_id, row.event_time), (None, None));
        }
    }

    #[test]
    fn unstorable_payloads_are_refused_with_a_class() {
        assert_eq!(class(None), "null_value");
        assert_eq!(class(Some(b"")), "empty_value");
        assert_eq!(class(Some(&[0xff, 0xfe, b'{'])), "not_utf8");
        assert_eq!(class(Some(b"this is not json")), "invalid_json");
        assert_eq!(class(Some(b"{\"a\":1")), "invalid_json");
        assert_eq!(class(Some(b"[1,2,3]")), "not_an_object");
        assert_eq!(class(Some(b"\"a string\"")), "not_an_object");
        assert_eq!(class(Some(b"null")), "not_an_object");
        assert_eq!(class(Some(br#"{"event_id":7}"#)), "invalid_field");
        assert_eq!(class(Some(br#"{"event_id":"  "}"#)), "invalid_field");
        assert_eq!(class(Some(br#"{"status":["x"]}"#)), "invalid_field");
        assert_eq!(class(Some(br#"{"event_time":"yesterday"}"#)), "invalid_timestamp");
        assert_eq!(class(Some(br#"{"event_time":"0000-01-01T00:00:00Z"}"#)), "invalid_timestamp");
        assert_eq!(class(Some(br#"{"note":"a\u0000b"}"#)), "nul_character");
        assert_eq!(class(Some(br#"{"a\u0000":1}"#)), "nul_character");
        let long = format!(r#"{{"event_id":"{}"}}"#, "x".repeat(mapping::EVENT_ID_MAX_BYTES + 1));
        assert_eq!(class(Some(long.as_bytes())), "field_too_long");
    }

    #[test]
    fn kafka_timestamps_become_rfc3339_when_representable() {
        assert_eq!(
            mapping::rfc3339_from_millis(1_704_067_200_123).as_deref(),
            Some("2024-01-01T00:00:00.123Z")
        );
        assert_eq!(mapping::rfc3339_from_millis(i64::MIN), None);
        assert_eq!(mapping::rfc3339_from_millis(-62_135_596_800_001), None, "year 0 is out of range");
    }

    #[test]
    fn only_data_errors_are_permanent() {
        for state in ["22001", "22P02", "22007", "23505", "23514", "23502"] {
            assert!(is_permanent_sqlstate(state), "{state}");
        }
        // Connection loss, shutdown, serialization failure, deadlock, missing table,
        // privileges, too many connections, read-only standby: retried.
        for state in ["08006", "57P01", "40001", "40P01", "42P01", "42501", "53300", "25006"] {
            assert!(!is_permanent_sqlstate(state), "{state}");
        }
    }

    #[test]
    fn table_names_are_plain_lowercase_identifiers() {
        assert!(is_table_name("delivery_events"));
        assert!(is_table_name("_t1"));
        assert!(is_table_name(&"a".repeat(TABLE_NAME_MAX)));
        for bad in ["", "1abc", "Events", "a-b", "a b", "a\"b", "événements"] {
            assert!(!is_table_name(bad), "{bad:?}");
        }
        assert!(!is_table_name(&"a".repeat(TABLE_NAME_MAX + 1)));
    }

    #[test]
    fn the_target_never_shows_the_password() {
        let config = tokio_postgres::Config::from_str("postgres://app:s3cret@db.internal:6543/events")
            .expect("valid url");
        let shown = describe(&config);
        assert_eq!(shown, "app@db.internal:6543/events");
        let kv = tokio_postgres::Config::from_str("host=localhost user=app password=s3cret dbname=test")
            .expect("valid key-value string");
        assert_eq!(describe(&kv), "app@localhost:5432/test");
    }

    #[test]
    fn the_statements_do_not_depend_on_the_batch() {
        let sql = Sql::new("events", "events_dead_letter");
        assert!(sql.insert.contains("unnest($1::text[]"));
        assert!(sql.insert.ends_with("ON CONFLICT DO NOTHING"));
        assert!(sql.dead_letter.contains("INSERT INTO \"events_dead_letter\""));
        assert!(sql.create_table.contains("UNIQUE (kafka_topic, kafka_partition, kafka_offset)"));
    }
}
