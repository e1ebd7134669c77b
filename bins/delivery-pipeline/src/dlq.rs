//! `delivery-pipeline dlq list|replay`: inspect the dead-letter table and feed its entries
//! through the sink again, for instance after widening a column or fixing a payload in place
//! (`UPDATE <table>_dead_letter SET payload = … WHERE id = …`).
//!
//! Replay is idempotent: a stored entry is deleted only after its row is in the events table (a
//! repeat finds the row already there and deletes the entry then); an entry still refused stays,
//! with its attempt count raised and its reason refreshed.

use dp_schema_registry::{Decoder, SchemaRegistryConfig};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use dp_core::{DeadLetter, Sink, decode_record};
use dp_sink_mysql::{MysqlSink, MysqlSinkConfig};
use indicatif::{ProgressBar, ProgressStyle};
use mysql_async::prelude::Queryable;
use mysql_async::{Params, Value};

/// Entries replayed per query.
const PAGE: usize = 500;

/// Which entries a command applies to.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only entries whose last failure is at or after this.
    pub since: Option<Since>,
    /// Only entries of this error class.
    pub class: Option<String>,
    /// At most this many entries (oldest first).
    pub limit: Option<u64>,
}

/// A point in time: a duration back from now (`2h`), or an RFC 3339 timestamp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Since {
    /// This long before now.
    Ago(Duration),
    /// This many seconds since the Unix epoch.
    At(i64),
}

impl FromStr for Since {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(d) = humantime::parse_duration(s) {
            return Ok(Self::Ago(d));
        }
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map(|t| Self::At(t.unix_timestamp()))
            .map_err(|_| format!("`{s}` is neither a duration (2h, 30m) nor an RFC 3339 timestamp"))
    }
}

impl Filter {
    /// The `WHERE` clause (after `id > ?`) and its parameters.
    fn clause(&self) -> (String, Vec<Value>) {
        let mut sql = String::new();
        let mut params = Vec::new();
        match self.since {
            Some(Since::Ago(d)) => {
                sql.push_str(" AND `last_failed_at` >= NOW(3) - INTERVAL ? MICROSECOND");
                params.push(Value::from(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)));
            }
            // UNIX_TIMESTAMP reads the DATETIME in the session's time zone, the one
            // CURRENT_TIMESTAMP wrote it in.
            Some(Since::At(t)) => {
                sql.push_str(" AND UNIX_TIMESTAMP(`last_failed_at`) >= ?");
                params.push(Value::from(t));
            }
            None => {}
        }
        if let Some(class) = &self.class {
            sql.push_str(" AND `error_class` = ?");
            params.push(Value::from(class.as_str()));
        }
        (sql, params)
    }
}

/// One dead-letter entry, without its bytes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    /// The entry's id in the dead-letter table.
    pub id: u64,
    /// Kafka topic of the message.
    pub topic: String,
    /// Kafka partition of the message.
    pub partition: i32,
    /// Kafka offset of the message.
    pub offset: i64,
    /// Machine-readable class (`invalid_json`, `field_too_long`, `sink_rejected`, …).
    pub error_class: String,
    /// MySQL's error number, when MySQL refused it.
    pub mysql_errno: Option<u32>,
    /// MySQL's SQLSTATE, when MySQL refused it.
    pub sqlstate: Option<String>,
    /// Times it was refused.
    pub attempts: u32,
    /// First refusal (server time).
    pub first_failed_at: String,
    /// Latest refusal (server time).
    pub last_failed_at: String,
    /// Size of the message value; `None` for a tombstone.
    pub payload_bytes: Option<u64>,
    /// Why it was refused.
    pub reason: String,
}

type EntryRow =
    (u64, String, i32, i64, String, Option<u32>, Option<String>, u32, String, String, Option<u64>, String);

/// Entries matching `filter`, oldest first.
pub async fn list(config: &MysqlSinkConfig, filter: &Filter) -> anyhow::Result<Vec<Entry>> {
    let sink = connect(config).await?;
    let mut conn = sink.pool().get_conn().await.context("cannot get a mysql connection")?;
    let (clause, mut params) = filter.clause();
    params.push(Value::from(filter.limit.unwrap_or(u64::MAX)));
    let sql = format!(
        "SELECT `id`, `kafka_topic`, `kafka_partition`, `kafka_offset`, `error_class`, `mysql_errno`, `sqlstate`, \
         `attempts`, DATE_FORMAT(`first_failed_at`, '%Y-%m-%d %H:%i:%s.%f'), \
         DATE_FORMAT(`last_failed_at`, '%Y-%m-%d %H:%i:%s.%f'), LENGTH(`payload`), `reason` \
         FROM `{}` WHERE 1 = 1{clause} ORDER BY `id` LIMIT ?",
        config.dead_letter_table()
    );
    let rows: Vec<EntryRow> =
        conn.exec(sql, Params::Positional(params)).await.context("cannot read the dead-letter table")?;
    drop(conn);
    sink.close().await?;
    Ok(rows
        .into_iter()
        .map(|r| Entry {
            id: r.0,
            topic: r.1,
            partition: r.2,
            offset: r.3,
            error_class: r.4,
            mysql_errno: r.5,
            sqlstate: r.6,
            attempts: r.7,
            first_failed_at: r.8,
            last_failed_at: r.9,
            payload_bytes: r.10,
            reason: r.11,
        })
        .collect())
}

/// Prints entries as an aligned table, reasons cut to one line.
pub fn print_table(entries: &[Entry]) {
    println!(
        "{:>8}  {:<40}  {:<18}  {:>5}  {:>8}  {:<23}  {:>9}  reason",
        "id", "topic/partition@offset", "class", "errno", "attempts", "last failed", "bytes"
    );
    for e in entries {
        let coordinates = format!("{}/{}@{}", e.topic, e.partition, e.offset);
        let reason: String = e.reason.lines().next().unwrap_or_default().chars().take(100).collect();
        println!(
            "{:>8}  {:<40}  {:<18}  {:>5}  {:>8}  {:<23}  {:>9}  {reason}",
            e.id,
            coordinates,
            e.error_class,
            e.mysql_errno.map_or_else(|| "-".into(), |n| n.to_string()),
            e.attempts,
            e.last_failed_at.get(..23).unwrap_or(&e.last_failed_at),
            e.payload_bytes.map_or_else(|| "null".into(), |n| n.to_string()),
        );
    }
    println!("{} entries", entries.len());
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    /// Entries looked at.
    pub entries: u64,
    /// Stored as new rows; their entries were deleted.
    pub inserted: u64,
    /// Already in the events table; their entries were deleted.
    pub already_stored: u64,
    /// Refused again; their entries stay with one more attempt counted.
    pub still_refused: u64,
    /// Entries whose `record` column cannot be decoded (left untouched).
    pub undecodable: u64,
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replayed {} dead-letter entries: {} stored as new rows, {} already stored (entries removed), {} still refused (kept, attempts counted), {} undecodable (kept)",
            self.entries, self.inserted, self.already_stored, self.still_refused, self.undecodable
        )
    }
}

/// Feeds the entries matching `filter` through the MySQL sink again, oldest first, one
/// transaction each. The payload is taken from the entry's `payload` column, so a payload fixed
/// in place is what gets stored. A transient MySQL failure stops the replay with an error;
/// nothing is lost, and running it again resumes.
pub async fn replay(
    config: &MysqlSinkConfig,
    registry: &SchemaRegistryConfig,
    filter: &Filter,
    progress: bool,
) -> anyhow::Result<ReplayReport> {
    // No consumer group: the offset watermark would skip every entry (they are below it).
    let mut sink = connect(config).await?;
    if !config.registry_formats().is_empty() {
        // Entries of Avro, Protobuf and JSON Schema topics are decoded again, as when consumed.
        let decoder = Decoder::new(registry).map_err(|e| anyhow::anyhow!("{e}"))?;
        sink = sink.with_decoder(std::sync::Arc::new(decoder));
    }
    let table = config.dead_letter_table();
    let (clause, params) = filter.clause();
    let mut conn = sink.pool().get_conn().await.context("cannot get a mysql connection")?;
    let total: u64 = conn
        .exec_first(
            format!("SELECT COUNT(*) FROM `{table}` WHERE 1 = 1{clause}"),
            Params::Positional(params.clone()),
        )
        .await
        .context("cannot count dead-letter entries")?
        .unwrap_or(0);
    let total = filter.limit.map_or(total, |l| total.min(l));
    let bar = if progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} entries ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut report = ReplayReport::default();
    let mut after = 0u64;
    while report.entries < total {
        let mut page_params = vec![Value::from(after)];
        page_params.extend(params.iter().cloned());
        page_params.push(Value::from((total - report.entries).min(PAGE as u64)));
        let page: Vec<(u64, Vec<u8>, Option<Vec<u8>>)> = conn
            .exec(
                format!("SELECT `id`, `record`, `payload` FROM `{table}` WHERE `id` > ?{clause} ORDER BY `id` LIMIT ?"),
                Params::Positional(page_params),
            )
            .await
            .context("cannot read dead-letter entries")?;
        if page.is_empty() {
            break;
        }
        for (id, record, payload) in page {
            after = id;
            report.entries += 1;
            bar.inc(1);
            let Ok(mut record) = decode_record(&record) else {
                tracing::warn!(id, "dead-letter entry's record cannot be decoded; left as it is");
                report.undecodable += 1;
                continue;
            };
            record.payload = payload;
            match sink.write_batch(std::slice::from_ref(&record)).await {
                Ok(outcome) if outcome.dead_lettered == 0 => {
                    conn.exec_drop(format!("DELETE FROM `{table}` WHERE `id` = ?"), (id,))
                        .await
                        .context("cannot delete a replayed dead-letter entry")?;
                    if outcome.inserted > 0 {
                        report.inserted += 1;
                    } else {
                        report.already_stored += 1;
                    }
                }
                // Refused by the mapping again: the sink re-dead-lettered it (attempts + 1).
                Ok(_) => report.still_refused += 1,
                Err(e) if !e.is_transient() => {
                    let entry = DeadLetter {
                        error_class: "sink_rejected".into(),
                        code: e.code(),
                        sqlstate: e.sqlstate().map(str::to_owned),
                        reason: e.to_string(),
                        record,
                    };
                    sink.dead_letter(std::slice::from_ref(&entry))
                        .await
                        .context("cannot record the failed replay attempt")?;
                    report.still_refused += 1;
                }
                Err(e) => {
                    bar.abandon();
                    let why = if e.is_statement() {
                        "MySQL refuses the statement for every row (fix the table or the mapping)"
                    } else {
                        "MySQL (or the Schema Registry) failed transiently"
                    };
                    return Err(anyhow::Error::new(e).context(format!(
                        "{why} after {} entries; nothing was lost, run the replay again",
                        report.entries - 1
                    )));
                }
            }
        }
    }
    bar.finish_and_clear();
    drop(conn);
    sink.close().await?;
    Ok(report)
}

/// The sink on the existing tables (a listing or replay never creates them).
async fn connect(config: &MysqlSinkConfig) -> anyhow::Result<MysqlSink> {
    let mut config = config.clone();
    config.create_table = false;
    Ok(MysqlSink::connect(&config).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_or_a_timestamp() {
        assert_eq!("2h".parse::<Since>(), Ok(Since::Ago(Duration::from_secs(7200))));
        assert_eq!("1970-01-01T00:01:00Z".parse::<Since>(), Ok(Since::At(60)));
        assert!("yesterday".parse::<Since>().is_err());
    }

    #[test]
    fn filters_become_placeholders_not_text() {
        let f = Filter { since: Some(Since::At(5)), class: Some("x' OR 1=1 --".into()), limit: None };
        let (sql, params) = f.clause();
        assert!(!sql.contains("OR 1=1"));
        assert_eq!(sql.matches('?').count(), params.len());
    }
}
