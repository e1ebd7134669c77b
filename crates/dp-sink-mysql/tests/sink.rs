//! The MySQL sink against the real MariaDB on 127.0.0.1:3306: the watermark filter, in-batch
//! duplicate offsets and the dead-letter path, on a table without a unique key.

use dp_core::{DeadLetter, Record, SecretUrl, Sink};
use dp_sink_mysql::{MysqlSink, MysqlSinkConfig};
use mysql_async::prelude::Queryable;

fn rec(offset: i64) -> Record {
    Record::new("t", 0, offset, Some(format!(r#"{{"status":"S{offset}"}}"#).into_bytes()))
}

async fn sink_without_unique_key(name: &str) -> (MysqlSink, mysql_async::Conn, String) {
    let table = format!("sink_{name}_{}", std::process::id());
    let config = MysqlSinkConfig {
        url: SecretUrl::new("mysql://root@127.0.0.1:3306/test"),
        table: table.clone(),
        offsets_table: format!("{table}_offsets"),
        ..MysqlSinkConfig::default()
    };
    let sink = MysqlSink::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("MariaDB must answer on 127.0.0.1:3306: {e}"))
        .with_consumer_group("g");
    let mut conn = sink.pool().get_conn().await.expect("conn");
    conn.query_drop(format!("ALTER TABLE `{table}` DROP INDEX `uq_event_id`"))
        .await
        .expect("drop unique key");
    (sink, conn, table)
}

#[tokio::test]
async fn records_below_the_watermark_and_repeated_offsets_are_written_once() {
    let (sink, mut conn, table) = sink_without_unique_key("dedupe").await;
    // The same offset twice in one batch (a partition re-read after an eager rebalance).
    let o = sink.write_batch(&[rec(0), rec(1), rec(1), rec(2)]).await.expect("batch");
    assert_eq!((o.inserted, o.duplicates), (3, 1));
    // Replays below the watermark (3) write nothing, even without a unique key.
    let o = sink.write_batch(&[rec(1), rec(2), rec(3)]).await.expect("replay");
    assert_eq!((o.inserted, o.duplicates), (1, 2));
    let rows: Option<u64> = conn.query_first(format!("SELECT COUNT(*) FROM `{table}`")).await.expect("count");
    assert_eq!(rows, Some(4));
    let marks = sink.watermarks(&[("t".into(), 0)]).await.expect("watermarks");
    assert_eq!(marks, vec![("t".to_string(), 0, 4)]);
    // A dead letter below the watermark is already stored: skipped, not stored twice.
    let entry = DeadLetter {
        record: rec(2),
        error_class: "sink_rejected".into(),
        code: Some(1406),
        sqlstate: None,
        reason: "x".into(),
    };
    sink.dead_letter(&[entry]).await.expect("dead letter");
    let dead: Option<u64> =
        conn.query_first(format!("SELECT COUNT(*) FROM `{table}_dead_letter`")).await.expect("count");
    assert_eq!(dead, Some(0));
    conn.query_drop(format!("DROP TABLE `{table}`, `{table}_dead_letter`, `{table}_offsets`"))
        .await
        .expect("drop");
}
