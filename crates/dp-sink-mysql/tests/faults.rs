//! How the sink classifies what the real MariaDB and MySQL (`servers`) answer when the table
//! changes under it or the mapping asks for something no row can give: statement and schema
//! faults (the same for every row: retried by the runtime, never dead-lettered) apart from data
//! faults (one row's value: dead-lettered). The codes come from the servers themselves, so a
//! server that reports a fault differently fails here.

mod servers;

use dp_core::{ErrorKind, Record, Sink, SinkError};
use dp_sink_mysql::{MysqlSink, MysqlSinkConfig};
use mysql_async::prelude::Queryable;
use servers::{Server, on_both_servers};

on_both_servers!(
    a_table_changed_under_the_sink_is_a_statement_fault_and_a_narrowed_column_a_data_fault,
    a_declared_column_the_server_fills_itself_is_refused_for_every_row_as_a_statement_fault,
);

fn rec(offset: i64) -> Record {
    Record::new("t", 0, offset, Some(format!(r#"{{"status":"S{offset}"}}"#).into_bytes()))
}

/// The error of a write that must fail, checked to be of `kind` with `code`.
async fn refused(sink: &MysqlSink, records: &[Record], kind: ErrorKind, code: u32, what: &str) -> SinkError {
    let err = sink.write_batch(records).await.expect_err(what);
    assert_eq!((err.kind(), err.code()), (kind, Some(code)), "{what}: {err}");
    assert!(!err.is_presumed(), "{what}: known by its code: {err}");
    err
}

async fn a_table_changed_under_the_sink_is_a_statement_fault_and_a_narrowed_column_a_data_fault(
    server: &Server,
) {
    let table = format!("faults_alter_{}", std::process::id());
    let helpers = [format!("{table}_a"), format!("{table}_b")];
    let mut conn = server.conn().await;
    for t in &helpers {
        conn.query_drop(format!("DROP TABLE IF EXISTS `{t}`")).await.expect("drop");
    }
    let config = server.fresh_sink_config(&mut conn, &table).await;
    let sink = MysqlSink::connect(&config).await.expect("connect").with_consumer_group("g");
    sink.write_batch(&[rec(0)]).await.expect("the table as created");

    // A column dropped, then put back.
    conn.query_drop(format!("ALTER TABLE `{table}` DROP COLUMN `status`")).await.expect("drop column");
    let err = refused(&sink, &[rec(1), rec(2)], ErrorKind::Statement, 1054, "a dropped column").await;
    assert_eq!(err.sqlstate(), Some("42S22"), "{err}");
    conn.query_drop(format!(
        "ALTER TABLE `{table}` ADD COLUMN `status` VARCHAR(32) NULL AFTER `tracking_id`"
    ))
    .await
    .expect("restore column");
    assert_eq!(sink.write_batch(&[rec(1), rec(2)]).await.expect("restored").inserted, 2);

    // A column renamed, then renamed back.
    conn.query_drop(format!("ALTER TABLE `{table}` RENAME COLUMN `status` TO `state`"))
        .await
        .expect("rename");
    refused(&sink, &[rec(3)], ErrorKind::Statement, 1054, "a renamed column").await;
    conn.query_drop(format!("ALTER TABLE `{table}` RENAME COLUMN `state` TO `status`"))
        .await
        .expect("rename");

    // A NOT NULL column without a default that the statement leaves out.
    conn.query_drop(format!("ALTER TABLE `{table}` ADD COLUMN `carrier` INT NOT NULL")).await.expect("add");
    refused(&sink, &[rec(3)], ErrorKind::Statement, 1364, "a NOT NULL column left out").await;
    conn.query_drop(format!("ALTER TABLE `{table}` DROP COLUMN `carrier`")).await.expect("drop");

    // A trigger whose query names an ambiguous column: 1052, SQLSTATE 23000 — an integrity class,
    // yet every row fails it alike (the runtime used to dead-letter every record with it).
    for h in &helpers {
        conn.query_drop(format!("CREATE TABLE `{h}` (id INT)")).await.expect("helper table");
    }
    conn.query_drop(format!(
        "CREATE TRIGGER `{table}_ambiguous` BEFORE INSERT ON `{table}` FOR EACH ROW \
         SET NEW.tracking_id = (SELECT id FROM `{}`, `{}` LIMIT 1)",
        helpers[0], helpers[1]
    ))
    .await
    .expect("trigger");
    let err = refused(&sink, &[rec(3)], ErrorKind::Statement, 1052, "an ambiguous column").await;
    assert_eq!(err.sqlstate(), Some("23000"), "{err}");
    conn.query_drop(format!("DROP TRIGGER `{table}_ambiguous`")).await.expect("drop trigger");

    // A column narrowed below the values: each row's value is refused (a data fault, by its code,
    // even when every row has it).
    conn.query_drop(format!("ALTER TABLE `{table}` MODIFY `status` VARCHAR(2) NULL")).await.expect("narrow");
    let err = refused(&sink, &[rec(10)], ErrorKind::Permanent, 1406, "a value too long").await;
    assert_eq!(err.sqlstate(), Some("22001"), "{err}");
    conn.query_drop(format!("ALTER TABLE `{table}` MODIFY `status` VARCHAR(32) NULL")).await.expect("widen");

    assert_eq!(sink.write_batch(&[rec(3), rec(10)]).await.expect("all fixed").inserted, 2);
    let count = |t: String| format!("SELECT COUNT(*) FROM `{t}`");
    let rows: Option<u64> = conn.query_first(count(table.clone())).await.expect("count");
    let dead: Option<u64> = conn.query_first(count(format!("{table}_dead_letter"))).await.expect("count");
    assert_eq!((rows, dead), (Some(5), Some(0)), "every record once, none dead-lettered by the sink");
    for t in [&table, &format!("{table}_dead_letter"), &format!("{table}_offsets"), &helpers[0], &helpers[1]]
    {
        conn.query_drop(format!("DROP TABLE `{t}`")).await.expect("drop");
    }
}

async fn a_declared_column_the_server_fills_itself_is_refused_for_every_row_as_a_statement_fault(
    server: &Server,
) {
    let table = format!("faults_generated_{}", std::process::id());
    let text = format!(
        r#"
        url = "{}"
        table = "{table}"
        dead_letter_table = "{table}_dlq"
        offsets_table = "{table}_offsets"
        create_table = false
        columns = [
          {{ name = "tracking_id", pointer = "/tracking_id", type = "string", max_length = 32, required = true }},
          {{ name = "status", pointer = "/status", type = "string", max_length = 32 }},
          {{ name = "status_length", pointer = "/length", type = "integer" }},
        ]
        write = {{ mode = "upsert", key = ["tracking_id"] }}
        "#,
        server.url
    );
    let mut config: MysqlSinkConfig = toml::from_str(&text).expect("config");
    let mut conn = server.conn().await;
    for t in [&table, &format!("{table}_dlq"), &format!("{table}_offsets")] {
        conn.query_drop(format!("DROP TABLE IF EXISTS `{t}`")).await.expect("drop");
    }
    // The dead-letter and offsets tables as `migrate` makes them; the table by hand, with the
    // mapping's last column generated by the server.
    for stmt in config.ddl().expect("ddl").iter().skip(1) {
        conn.query_drop(stmt).await.expect("migrate");
    }
    conn.query_drop(format!(
        "CREATE TABLE `{table}` (tracking_id VARCHAR(32) NOT NULL PRIMARY KEY, status VARCHAR(32) NULL, \
         status_length INT AS (CHAR_LENGTH(status)) STORED)"
    ))
    .await
    .expect("table");
    config.create_table = false;
    // The startup check takes it: the column exists, holds integers, may be NULL.
    let sink = MysqlSink::connect(&config).await.expect("the live-table check accepts the mapping");
    let records: Vec<Record> = (0..3)
        .map(|o| {
            let payload = format!(r#"{{"tracking_id":"T{o}","status":"S{o}","length":2}}"#);
            Record::new("t", 0, o, Some(payload.into_bytes()))
        })
        .collect();
    // MariaDB: 1906 (the value given for a generated column is ignored: an error in strict mode);
    // MySQL: 3105 (not allowed). Both HY000, the same for every row.
    let code = if server.is_mysql() { 3105 } else { 1906 };
    for batch in [&records[..], &records[..1], &records[2..]] {
        let err = refused(&sink, batch, ErrorKind::Statement, code, "a generated column written").await;
        assert_eq!(err.sqlstate(), Some("HY000"), "{err}");
    }
    // Fixed by making it a plain column: every row is taken.
    conn.query_drop(format!("ALTER TABLE `{table}` MODIFY status_length INT NULL"))
        .await
        .expect("plain column");
    assert_eq!(sink.write_batch(&records).await.expect("fixed").inserted, 3);
    for t in [&table, &format!("{table}_dlq"), &format!("{table}_offsets")] {
        conn.query_drop(format!("DROP TABLE `{t}`")).await.expect("drop");
    }
}
