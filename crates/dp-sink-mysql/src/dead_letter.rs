//! The dead-letter table (and the Kafka dead-letter publisher, when configured): records that
//! cannot become rows, written in the batch's own transaction.

use crate::MysqlSink;
use crate::Target;
use crate::sink::date_value;
use crate::sql;
use dp_core::{DeadLetter, Record, SinkError, encode_record};
use mysql_async::prelude::*;
use mysql_async::{TxOpts, Value};

use crate::fault::classify;
use crate::mapping::DateTimeParts;

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl MysqlSink {
    /// Stores dead letters in the table and/or hands them to the publisher, within `tx`.
    pub(crate) async fn store_dead_letters(
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

    pub(crate) async fn insert_dead_letters(
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
                .map_err(|e| classify(&format!("insert into {} failed", self.dead_letter_table), e))?;
        }
        Ok(())
    }

    /// Dead letters' transaction on `conn` (the watermark path of rule 2 included).
    pub(crate) async fn dead_letter_in(
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
