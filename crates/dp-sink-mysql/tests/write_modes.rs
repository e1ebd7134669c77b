//! Declared columns, upserts with a monotonic guard, routing, and the live-table check, against
//! the real MariaDB and MySQL (`servers`): MariaDB's upserts say `VALUES(col)`, MySQL's name
//! the incoming row with an alias.

mod servers;

use dp_core::{Record, SecretUrl, Sink};
use dp_sink_mysql::{MysqlSink, MysqlSinkConfig};
use mysql_async::prelude::Queryable;
use servers::{Server, on_both_servers};

on_both_servers!(
    upserts_keep_the_newest_status_whatever_order_events_arrive_in,
    duplicate_keys_in_one_batch_are_reduced_to_the_winner_before_the_statement,
    two_topics_are_written_to_their_own_tables_in_one_transaction,
    a_table_that_does_not_match_the_mapping_stops_startup_naming_the_mismatch,
    migrate_ddl_creates_a_table_the_check_accepts,
);

/// A `[mysql]` section with `table` mapped for the latest status per shipment.
fn status_config(server: &Server, table: &str, extra: &str) -> MysqlSinkConfig {
    let text = format!(
        r#"
        url = "{}"
        table = "{table}"
        dead_letter_table = "{table}_dlq"
        offsets_table = "{table}_offsets"
        columns = [
          {{ name = "tracking_id", pointer = "/tracking_id", type = "string", max_length = 32, required = true }},
          {{ name = "status", pointer = "/status", type = "string", max_length = 32, default = "UNKNOWN" }},
          {{ name = "event_time", pointer = "/event_time", type = "timestamp", required = true }},
          {{ name = "weight_kg", pointer = "/parcel/weight", type = "decimal", precision = 8, scale = 2 }},
          {{ name = "source", computed = "header:source", type = "string", max_length = 16 }},
          {{ name = "kafka_offset", computed = "kafka_offset" }},
          {{ name = "updated_at", computed = "ingest_time" }},
        ]
        write = {{ mode = "upsert", key = ["tracking_id"], guard = "event_time" }}
        {extra}
        "#,
        server.url
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn event(topic: &str, offset: i64, tracking: &str, status: &str, minute: u32) -> Record {
    let mut r = Record::new(
        topic,
        0,
        offset,
        Some(
            format!(
                r#"{{"tracking_id":"{tracking}","status":"{status}","event_time":"2026-11-24T10:{minute:02}:00Z","parcel":{{"weight":1.25}}}}"#
            )
            .into_bytes(),
        ),
    );
    r.headers.push(dp_core::Header { name: "source".into(), value: Some(b"scanner".to_vec()) });
    r
}

async fn statuses(conn: &mut mysql_async::Conn, table: &str) -> Vec<(String, String)> {
    conn.query(format!("SELECT tracking_id, status FROM `{table}` ORDER BY tracking_id"))
        .await
        .expect("select")
}

async fn upserts_keep_the_newest_status_whatever_order_events_arrive_in(server: &Server) {
    let table = format!("upsert_order_{}", std::process::id());
    let config = status_config(server, &table, "");
    let mut conn = server.fresh(&config).await;
    let sink = MysqlSink::connect(&config).await.expect("connect creates the table from the mapping");

    let o = sink
        .write_batch(&[event("t", 0, "A", "PICKED_UP", 1), event("t", 1, "B", "PICKED_UP", 2)])
        .await
        .expect("1");
    assert_eq!((o.inserted, o.updated, o.duplicates), (2, 0, 0));
    // A's delivery arrives before its (older) in-transit scan.
    let o = sink.write_batch(&[event("t", 2, "A", "DELIVERED", 9)]).await.expect("2");
    assert_eq!((o.inserted, o.updated, o.duplicates), (0, 1, 0));
    let o = sink
        .write_batch(&[event("t", 3, "A", "IN_TRANSIT", 5), event("t", 4, "B", "IN_TRANSIT", 3)])
        .await
        .expect("3");
    assert_eq!((o.inserted, o.updated, o.duplicates), (0, 1, 1), "the late scan of A changes nothing");
    // A replay of an old event (a restore, say) changes nothing either.
    let o = sink.write_batch(&[event("t", 0, "A", "PICKED_UP", 1)]).await.expect("replay");
    assert_eq!((o.inserted, o.updated, o.duplicates), (0, 0, 1));
    assert_eq!(
        statuses(&mut conn, &table).await,
        [("A".to_owned(), "DELIVERED".to_owned()), ("B".to_owned(), "IN_TRANSIT".to_owned())]
    );
    let (offset, source, weight): (i64, String, String) = conn
        .query_first(format!(
            "SELECT kafka_offset, source, CAST(weight_kg AS CHAR) FROM `{table}` WHERE tracking_id = 'A'"
        ))
        .await
        .expect("select")
        .expect("row");
    assert_eq!(
        (offset, source.as_str(), weight.as_str()),
        (2, "scanner", "1.25"),
        "every column is the winner's"
    );
}

async fn duplicate_keys_in_one_batch_are_reduced_to_the_winner_before_the_statement(server: &Server) {
    let table = format!("upsert_batch_{}", std::process::id());
    let config = status_config(server, &table, "");
    let mut conn = server.fresh(&config).await;
    let sink = MysqlSink::connect(&config).await.expect("connect").with_consumer_group("write-modes");
    let batch = [
        event("t", 0, "A", "PICKED_UP", 1),
        event("t", 1, "A", "DELIVERED", 9),
        event("t", 2, "A", "IN_TRANSIT", 5),
        event("t", 3, "B", "PICKED_UP", 1),
        event("t", 4, "B", "OUT_FOR_DELIVERY", 7),
    ];
    let o = sink.write_batch(&batch).await.expect("batch");
    assert_eq!((o.inserted, o.updated, o.duplicates, o.dead_lettered), (2, 0, 3, 0));
    assert_eq!(
        statuses(&mut conn, &table).await,
        [("A".to_owned(), "DELIVERED".to_owned()), ("B".to_owned(), "OUT_FOR_DELIVERY".to_owned())]
    );
    // A record without the required key is dead-lettered in the same transaction.
    let mut bad =
        Record::new("t", 0, 5, Some(br#"{"status":"LOST","event_time":"2026-11-24T11:00:00Z"}"#.to_vec()));
    bad.headers.clear();
    let o = sink.write_batch(&[bad]).await.expect("bad");
    assert_eq!(o.dead_lettered, 1);
    let class: Option<String> =
        conn.query_first(format!("SELECT error_class FROM `{table}_dlq`")).await.expect("dlq");
    assert_eq!(class.as_deref(), Some("missing_field"));
}

async fn two_topics_are_written_to_their_own_tables_in_one_transaction(server: &Server) {
    let table = format!("route_default_{}", std::process::id());
    let status_table = format!("route_status_{}", std::process::id());
    let mut config = status_config(server, &table, "");
    // The default table keeps the built-in columns; topic `status` goes to its own table.
    config.routes = vec![dp_sink_mysql::RouteConfig {
        topic: "status".into(),
        table: status_table.clone(),
        columns: std::mem::take(&mut config.columns),
        write: std::mem::take(&mut config.write),
        ..Default::default()
    }];
    let mut conn = server.fresh(&config).await;
    let sink = MysqlSink::connect(&config).await.expect("connect");
    assert_eq!(sink.tables(), [table.as_str(), status_table.as_str()]);
    let batch = [
        event("events", 0, "A", "PICKED_UP", 1),
        event("status", 0, "A", "PICKED_UP", 1),
        event("events", 1, "A", "DELIVERED", 9),
        event("status", 1, "A", "DELIVERED", 9),
    ];
    let o = sink.write_batch(&batch).await.expect("batch");
    assert_eq!((o.inserted, o.updated, o.duplicates), (3, 0, 1), "two events rows, one status row");
    let events: u64 =
        conn.query_first(format!("SELECT COUNT(*) FROM `{table}`")).await.expect("n").expect("n");
    assert_eq!(events, 2);
    assert_eq!(statuses(&mut conn, &status_table).await, [("A".to_owned(), "DELIVERED".to_owned())]);
}

async fn a_table_that_does_not_match_the_mapping_stops_startup_naming_the_mismatch(server: &Server) {
    let table = format!("live_check_{}", std::process::id());
    let mut config = status_config(server, &table, "create_table = false");
    let mut conn = server.fresh(&config).await;
    let err = |e: dp_sink_mysql::MysqlSinkError| e.to_string();

    let missing = err(MysqlSink::connect(&config).await.err().expect("no table"));
    assert!(missing.contains("table does not exist") && missing.contains("migrate --dry-run"), "{missing}");

    conn.query_drop(format!(
        "CREATE TABLE `{table}` (tracking_id VARCHAR(32) NOT NULL, status VARCHAR(8) NULL, event_time DATETIME(3) NOT NULL, \
         weight_kg DECIMAL(8,2) NULL, source VARCHAR(16) NULL, kafka_offset BIGINT NOT NULL, updated_at DATETIME(3) NOT NULL, \
         carrier VARCHAR(8) NOT NULL, PRIMARY KEY (tracking_id))"
    ))
    .await
    .expect("create");
    config.create_table = true; // creates the dead-letter and offsets tables; leaves ours alone
    let mismatch = err(MysqlSink::connect(&config).await.err().expect("mismatch"));
    assert!(
        mismatch.contains("mysql.columns[1] (`status`): the table's column is varchar(8) (8 characters) but max_length is 32"),
        "{mismatch}"
    );
    assert!(mismatch.contains("column `carrier` is NOT NULL without a default"), "{mismatch}");

    conn.query_drop(format!(
        "ALTER TABLE `{table}` MODIFY status VARCHAR(32) NULL, DROP COLUMN carrier, DROP PRIMARY KEY"
    ))
    .await
    .expect("alter");
    let no_key = err(MysqlSink::connect(&config).await.err().expect("no key"));
    assert!(no_key.contains("mysql.write.key: [tracking_id] is not the table's primary key"), "{no_key}");

    conn.query_drop(format!("ALTER TABLE `{table}` ADD UNIQUE KEY uq_tracking (tracking_id)"))
        .await
        .expect("key");
    MysqlSink::connect(&config).await.expect("a matching table passes");
}

async fn migrate_ddl_creates_a_table_the_check_accepts(server: &Server) {
    let config = status_config(server, &format!("ddl_{}", std::process::id()), "");
    let mut conn = server.fresh(&config).await;
    let ddl = config.ddl().expect("ddl");
    assert_eq!(ddl.len(), 3, "the mapped table, dead letters, offsets");
    assert!(
        ddl[0].contains("`weight_kg` DECIMAL(8,2) NULL") && ddl[0].contains("PRIMARY KEY (`tracking_id`)"),
        "{}",
        ddl[0]
    );
    for stmt in &ddl {
        conn.query_drop(stmt).await.unwrap_or_else(|e| panic!("{e}\n{stmt}"));
    }
    let mut checked = config.clone();
    checked.create_table = false;
    MysqlSink::connect(&checked).await.expect("the created table passes the live check");
    assert!(SecretUrl::new(&server.url).redacted().contains("127.0.0.1"));
}
