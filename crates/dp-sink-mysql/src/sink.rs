//! The sink: connecting (and checking the live tables), mapping records to rows, one
//! transaction per batch with its multi-row statements, deadlines on every call.

use crate::MysqlSink;
use crate::Table;
use crate::Target;
use crate::config::MysqlSinkConfig;
use crate::config::ident;
use crate::error::MysqlSinkError;
use crate::mapping::Rejection;
use crate::row_bytes;
use crate::schema;
use crate::sql;
use crate::stored::WatermarkMode;
use crate::watermark::OFFSETS_COLUMNS;
use crate::watermark::add_stored_ranges;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dp_core::{BatchOutcome, DeadLetter, DeadLetterPublisher, Record, Sink, SinkError, Turn};
use mysql_async::prelude::*;
use mysql_async::{Pool, PoolConstraints, PoolOpts, TxOpts, Value};

use crate::fault::classify;
use crate::mapping::{DateTimeParts, Delete, Op, Round, WriteMode};
use dp_schema_registry::{DecodeError, Decoder, Format};

/// The most rows one delete statement names: a long `OR` of key conditions (and, soft, a
/// `CASE` of as many branches) stays within what the range optimizer plans as key lookups.
const MAX_DELETES_PER_STATEMENT: usize = 250;

/// A record's table (its position in `MysqlSink::tables`) and what it does there (a row to
/// write, a row to delete), or why it can do nothing.
pub(crate) type Mapped = (usize, Result<Op, Rejection>);

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
            for (stmt, table) in ddl.iter().zip(
                specs
                    .iter()
                    .map(|t| t.table.as_str().to_owned())
                    .chain([dlq.clone(), config.offsets_table.clone()]),
            ) {
                conn.query_drop(stmt)
                    .await
                    .map_err(|e| MysqlSinkError::Table { table, message: e.to_string() })?;
            }
        }
        let mut tables = Vec::with_capacity(specs.len());
        let mut routes = HashMap::new();
        for spec in specs {
            schema::check(&mut conn, &spec).await?;
            if let Some(topic) = &spec.topic {
                routes.insert(topic.clone(), tables.len());
            }
            tables.push(Table {
                name: spec.table,
                mapping: spec.mapping,
                format: spec.format,
                key_format: spec.key_format,
            });
        }
        let dead_letter_table = ident("mysql.dead_letter_table", &dlq).map_err(MysqlSinkError::Config)?;
        let offsets_table =
            ident("mysql.offsets_table", &config.offsets_table).map_err(MysqlSinkError::Config)?;
        check_columns(&mut conn, &dlq, sql::DEAD_LETTER_COLUMNS).await?;
        if config.create_table {
            add_stored_ranges(&mut conn, &offsets_table).await?;
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
            dead_letter_table,
            offsets_table,
            consumer_group: None,
            watermark_mode: WatermarkMode::Prefix,
            dead_letter_rows: true,
            publisher: None,
            max_statement_bytes,
            statements: Arc::default(),
            connect_timeout: config.connect_timeout,
            query_timeout: config.query_timeout,
            session_each_call: Some(Arc::from(config.session_sql())),
            suspect: Arc::default(),
            max_connections: config.max_connections,
            decoder: None,
        })
    }

    /// Decodes the tables' Schema Registry formats (`format`, `key_format`) with `decoder`.
    /// Without one, a record of such a table fails its batch as a statement fault.
    pub fn with_decoder(mut self, decoder: Arc<Decoder>) -> Self {
        self.decoder = Some(decoder);
        self
    }

    /// Fetches the schemas the batch's registry-framed values and keys name; the registry
    /// down is an outage (the batch is retried), never a reason to dead-letter.
    async fn fetch_schemas(&self, records: &[Record]) -> Result<(), SinkError> {
        if !self.tables.iter().any(Table::decodes) {
            return Ok(());
        }
        let Some(decoder) = &self.decoder else {
            return Err(SinkError::statement(
                "a table reads a Schema Registry format, but no registry is configured ([schema_registry])",
            ));
        };
        let mut framed: Vec<&[u8]> = Vec::new();
        for r in records {
            let table = &self.tables[self.table_of(r)];
            framed.extend(r.payload.as_deref().filter(|_| table.format.needs_registry()));
            framed.extend(r.key.as_deref().filter(|_| table.decodes_keys()));
        }
        decoder.prepare(&framed).await.map_err(|e| SinkError::transient(e.to_string()))
    }

    /// `record` with its value and key decoded as its table's formats say (the key only when
    /// the table reads it); `Err` when the schemas were not fetched first (a transient error).
    fn decoded(&self, table: &Table, record: &Record) -> Result<Result<Record, Rejection>, SinkError> {
        let Some(decoder) = &self.decoder else {
            return Err(SinkError::statement(
                "a table reads a Schema Registry format, but no registry is configured ([schema_registry])",
            ));
        };
        let decode = |format: Format, bytes: &[u8], what: &str| match decoder.decode(format, bytes) {
            Ok(json) => Ok(Ok(json)),
            Err(e @ DecodeError::NotFetched(_)) => Err(SinkError::transient(e.to_string())),
            Err(e) => Ok(Err(Rejection::new(
                "undecodable",
                format!("the {what} does not decode as {}: {e}", format.as_str()),
            ))),
        };
        let mut out = record.clone();
        if let Some(p) = &record.payload
            && table.format.needs_registry()
        {
            match decode(table.format, p, "message value")? {
                Ok(json) => out.payload = Some(json.into_bytes()),
                Err(rejection) => return Ok(Err(rejection)),
            }
        }
        if let Some(k) = &record.key
            && table.decodes_keys()
        {
            match decode(table.key_format, k, "message key")? {
                Ok(json) => out.key = Some(Decoder::key_text(json).into_bytes()),
                Err(rejection) => return Ok(Err(rejection)),
            }
        }
        Ok(Ok(out))
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
    /// recorded ([`WatermarkMode::Ranges`]); see [`stored`](crate::stored).
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

    /// The connection pool, for callers that share it.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The default table rows are written to (`mysql.table`).
    pub fn table(&self) -> &str {
        self.tables[0].name.as_str()
    }

    /// Every table rows are written to: the default table, then the routed ones.
    pub fn tables(&self) -> Vec<&str> {
        self.tables.iter().map(|t| t.name.as_str()).collect()
    }

    /// The dead-letter table.
    pub fn dead_letter_table(&self) -> &str {
        self.dead_letter_table.as_str()
    }

    pub(crate) fn statement(&self, target: Target, rows: usize) -> Arc<str> {
        let mut cache = match self.statements.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        Arc::clone(cache.entry((target, rows)).or_insert_with(|| {
            Arc::from(match target {
                Target::DeadLetters => sql::insert_dead_letters(&self.dead_letter_table, self.syntax, rows),
                Target::Table(i) => self.tables[i].mapping.statement(&self.tables[i].name, self.syntax, rows),
                Target::Deletes(i) => {
                    let m = &self.tables[i].mapping;
                    let key: Vec<&sql::Ident> = m.key.iter().map(|&k| &m.idents[k]).collect();
                    let guard = m.guard.map(|g| &m.idents[g]);
                    let soft = m.deletes.as_ref().and_then(|d| d.soft.as_ref());
                    sql::delete_rows(&self.tables[i].name, &key, guard, soft, rows)
                }
            })
        }))
    }

    /// Writes `rows` (each row's values, moved into the statements' parameters) to table
    /// `index`; returns what the server did with them.
    pub(crate) async fn write_rows(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        index: usize,
        rows: Vec<Vec<Value>>,
    ) -> Result<BatchOutcome, SinkError> {
        let table = &self.tables[index];
        let columns = table.mapping.columns.len();
        let upsert = table.mapping.mode == WriteMode::Upsert;
        let plan = sql::plan_statements(
            rows.iter().map(|r| row_bytes(r)),
            columns,
            usize::MAX,
            self.max_statement_bytes,
        );
        let mut rows = rows.into_iter();
        let mut outcome = BatchOutcome::default();
        for range in plan {
            let n = range.len();
            let mut params = Vec::with_capacity(n * columns);
            for row in rows.by_ref().take(n) {
                params.extend(row);
            }
            let stmt = self.statement(Target::Table(index), n);
            tx.exec_drop(&*stmt, params)
                .await
                .map_err(|e| classify(&format!("insert into {} failed", table.name), e))?;
            let affected = tx.affected_rows() as usize;
            let o = if upsert {
                sql::upsert_outcome(n, affected, &tx.info())
            } else {
                BatchOutcome {
                    inserted: affected,
                    duplicates: n.saturating_sub(affected),
                    ..BatchOutcome::default()
                }
            };
            outcome += o;
        }
        Ok(outcome)
    }

    /// Deletes (or marks deleted) the rows `deletes` name in table `index`; returns how many
    /// the server found to change.
    pub(crate) async fn delete_rows(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        index: usize,
        deletes: Vec<Delete>,
    ) -> Result<BatchOutcome, SinkError> {
        let table = &self.tables[index];
        let soft = table.mapping.soft_delete_column().is_some();
        let guarded = table.mapping.guard.is_some();
        let per_row =
            table.mapping.key.len() * (1 + usize::from(soft)) + usize::from(guarded) + usize::from(soft);
        // Each row adds its condition (and, soft, its CASE branch) to the statement's text,
        // and its key once or twice to the parameters.
        let text = self.statement(Target::Deletes(index), 1).len();
        let plan = sql::plan_statements(
            deletes.iter().map(|d| text + row_bytes(&d.key) * (1 + usize::from(soft))),
            per_row,
            MAX_DELETES_PER_STATEMENT,
            self.max_statement_bytes,
        );
        let mut deletes = deletes.into_iter();
        let mut outcome = BatchOutcome::default();
        for range in plan {
            let n = range.len();
            let chunk: Vec<Delete> = deletes.by_ref().take(n).collect();
            let mut params = Vec::with_capacity(n * per_row);
            if soft {
                for d in &chunk {
                    params.extend(d.key.iter().cloned());
                    params.push(d.at.clone());
                }
            }
            for d in chunk {
                params.extend(d.key);
                params.extend(d.guard.filter(|_| guarded));
            }
            let stmt = self.statement(Target::Deletes(index), n);
            tx.exec_drop(&*stmt, params)
                .await
                .map_err(|e| classify(&format!("delete from {} failed", table.name), e))?;
            outcome.deleted += tx.affected_rows() as usize;
        }
        Ok(outcome)
    }

    /// The table `record` goes to, and what it does there (or why it can do nothing).
    pub(crate) fn map(&self, record: &Record, now: time::OffsetDateTime) -> Result<Mapped, SinkError> {
        let index = self.table_of(record);
        let table = &self.tables[index];
        if !table.decodes() {
            return Ok((index, table.mapping.map_op(record, now)));
        }
        Ok((index, self.decoded(table, record)?.and_then(|r| table.mapping.map_op(&r, now))))
    }

    /// The position in `tables` of `record`'s table.
    fn table_of(&self, record: &Record) -> usize {
        if self.routes.is_empty() { 0 } else { self.routes.get(&*record.topic).copied().unwrap_or(0) }
    }

    /// A connection for one call, within `connect_timeout`, with the session settings applied.
    /// After a deadline was missed, connections the pool kept from before must answer a ping
    /// within a second, or are closed and passed over.
    pub(crate) async fn begin(&self) -> Result<mysql_async::Conn, SinkError> {
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

    pub(crate) async fn connection(&self) -> Result<mysql_async::Conn, SinkError> {
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
    pub(crate) async fn abandon(&self, conn: mysql_async::Conn, what: &str) -> SinkError {
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

    /// One batch's transaction on `conn`: skip what is stored, write rows and dead letters,
    /// record the offsets, commit. [`Sink::write_batch`] bounds it by `query_timeout`.
    pub(crate) async fn write_in(
        &self,
        conn: &mut mysql_async::Conn,
        records: &[Record],
        mapped: Vec<Mapped>,
    ) -> Result<BatchOutcome, SinkError> {
        let mut tx = conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(|e| classify("cannot start a transaction", e))?;
        let (keep, marks) = self.fresh_records(&mut tx, records).await?;
        let mut per_table: Vec<Vec<Op>> = (0..self.tables.len()).map(|_| Vec::new()).collect();
        let mut rejected = Vec::new();
        for ((r, (table, m)), keep) in records.iter().zip(mapped).zip(keep) {
            if !keep {
                continue;
            }
            match m {
                Ok(op) => per_table[table].push(op),
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
        for (index, ops) in per_table.into_iter().enumerate() {
            if ops.is_empty() {
                continue;
            }
            let m = &self.tables[index].mapping;
            let rounds = if m.mode == WriteMode::Upsert {
                m.rounds(ops)
            } else {
                // Insert-only tables take no deletes (refused when the settings are compiled).
                let writes =
                    ops.into_iter().filter_map(|o| if let Op::Write(r) = o { Some(r) } else { None });
                vec![Round { writes: writes.collect(), deletes: Vec::new() }]
            };
            for round in rounds {
                if !round.writes.is_empty() {
                    outcome += self.write_rows(&mut tx, index, round.writes).await?;
                }
                if !round.deletes.is_empty() {
                    outcome += self.delete_rows(&mut tx, index, round.deletes).await?;
                }
            }
        }
        self.store_dead_letters(&mut tx, &rejected).await?;
        self.advance_watermarks(&mut tx, records, marks).await?;
        tx.commit().await.map_err(|e| classify("commit failed", e))?;
        // The runtime counts them in its metrics, by class.
        for d in &rejected {
            outcome.dead_letter(&d.error_class);
        }
        // Records below the watermark, second copies, upserts that lost within the batch, and
        // deletes that found no row (or one with a newer guard).
        outcome.duplicates = records
            .len()
            .saturating_sub(outcome.inserted + outcome.updated + outcome.deleted + outcome.dead_lettered);
        Ok(outcome)
    }
}

pub(crate) fn date_value(t: Option<DateTimeParts>) -> Value {
    match t {
        Some(t) => Value::Date(t.year, t.month, t.day, t.hour, t.minute, t.second, t.micros),
        None => Value::NULL,
    }
}

pub(crate) async fn check_columns(
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
impl Sink for MysqlSink {
    async fn write_batch(&self, records: &[Record]) -> Result<BatchOutcome, SinkError> {
        self.write_batch_in_turn(records, &Turn::now()).await
    }

    /// Fetches the batch's schemas and maps its records before the turn (outside the
    /// transaction, which then holds the watermark locks briefly); takes a connection, locks
    /// the watermarks and writes from the turn on.
    async fn write_batch_in_turn(&self, records: &[Record], turn: &Turn) -> Result<BatchOutcome, SinkError> {
        if records.is_empty() {
            // Durable as soon as the batch before is: the batch after must wait for that too.
            turn.wait().await?;
            return Ok(BatchOutcome::default());
        }
        self.fetch_schemas(records).await?;
        let now = time::OffsetDateTime::now_utc();
        let mapped: Vec<Mapped> = records.iter().map(|r| self.map(r, now)).collect::<Result<_, _>>()?;
        // Not before: the batch before may need the last connection of the pool to retry.
        turn.wait().await?;
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
