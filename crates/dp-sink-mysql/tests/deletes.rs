//! Tombstones as deletes (`write.delete = "tombstone"`) against the real MariaDB and MySQL:
//! hard and soft deletes, the guard, a batch mixing upserts and deletes of one key, replays.

mod servers;

use dp_core::{Record, Sink};
use dp_sink_mysql::{MysqlSink, MysqlSinkConfig};
use mysql_async::prelude::Queryable;
use servers::{Server, on_both_servers};

on_both_servers!(
    a_tombstone_deletes_its_row_unless_the_row_is_newer,
    upserts_and_deletes_of_one_key_in_one_batch_end_as_offset_order_would,
    a_soft_delete_marks_the_row_with_the_tombstone_time_and_an_upsert_clears_it,
    a_replayed_delete_below_the_watermark_spares_the_row_written_after_it,
);

/// The latest state per shipment, deleting on tombstones; `write` adds write settings.
fn config(server: &Server, table: &str, write: &str) -> MysqlSinkConfig {
    let text = format!(
        r#"
        url = "{}"
        table = "{table}"
        dead_letter_table = "{table}_dlq"
        offsets_table = "{table}_offsets"
        columns = [
          {{ name = "tracking_id", pointer = "/tracking_id", type = "string", max_length = 32, required = true }},
          {{ name = "status", pointer = "/status", type = "string", max_length = 32 }},
          {{ name = "event_time", pointer = "/event_time", type = "timestamp", required = true }},
        ]
        write = {{ mode = "upsert", key = ["tracking_id"], delete = "tombstone", {write} }}
        "#,
        server.url
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// 2026-11-24 10:<minute>:00 UTC, in milliseconds.
fn at(minute: i64) -> i64 {
    1_795_514_400_000 + minute * 60_000
}

fn upsert(offset: i64, tracking: &str, status: &str, minute: i64) -> Record {
    let payload = format!(
        r#"{{"tracking_id":"{tracking}","status":"{status}","event_time":"2026-11-24T10:{minute:02}:00Z"}}"#
    );
    let mut r = Record::new("t", 0, offset, Some(payload.into_bytes()));
    r.key = Some(tracking.as_bytes().to_vec());
    r.timestamp_ms = Some(at(minute));
    r
}

/// A tombstone for `tracking`, produced at minute `minute`.
fn tombstone(offset: i64, tracking: &str, minute: i64) -> Record {
    let mut r = Record::new("t", 0, offset, None);
    r.key = Some(tracking.as_bytes().to_vec());
    r.timestamp_ms = Some(at(minute));
    r
}

async fn rows(conn: &mut mysql_async::Conn, table: &str) -> Vec<(String, String)> {
    conn.query(format!("SELECT tracking_id, COALESCE(status, '') FROM `{table}` ORDER BY tracking_id"))
        .await
        .expect("select")
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

async fn a_tombstone_deletes_its_row_unless_the_row_is_newer(server: &Server) {
    let table = format!("del_guard_{}", std::process::id());
    let config = config(server, &table, r#"guard = "event_time""#);
    let mut conn = server.fresh(&config).await;
    let sink = MysqlSink::connect(&config).await.expect("connect");

    let o = sink
        .write_batch(&[
            upsert(0, "A", "PICKED_UP", 5),
            upsert(1, "B", "PICKED_UP", 5),
            upsert(2, "C", "PICKED_UP", 5),
        ])
        .await
        .expect("upserts");
    assert_eq!(o.inserted, 3);
    // A's tombstone is later than its row; B's is older (a late delete of an earlier state);
    // C's is at the same time; D has no row.
    let o = sink
        .write_batch(&[
            tombstone(3, "A", 9),
            tombstone(4, "B", 1),
            tombstone(5, "C", 5),
            tombstone(6, "D", 9),
        ])
        .await
        .expect("deletes");
    assert_eq!((o.deleted, o.duplicates, o.dead_lettered), (2, 2, 0), "{o:?}");
    assert_eq!(rows(&mut conn, &table).await, pairs(&[("B", "PICKED_UP")]));
    // A JSON key naming the column works too; a tombstone without a key is dead-lettered.
    let mut json_key = tombstone(7, "", 9);
    json_key.key = Some(br#"{"tracking_id":"B"}"#.to_vec());
    let mut keyless = tombstone(8, "", 9);
    keyless.key = None;
    let o = sink.write_batch(&[json_key, keyless]).await.expect("json key");
    assert_eq!((o.deleted, o.dead_lettered), (1, 1), "{o:?}");
    assert_eq!(rows(&mut conn, &table).await, pairs(&[]));
    let class: Option<String> =
        conn.query_first(format!("SELECT error_class FROM `{table}_dlq`")).await.expect("select");
    assert_eq!(class.as_deref(), Some("invalid_key"));
}

async fn upserts_and_deletes_of_one_key_in_one_batch_end_as_offset_order_would(server: &Server) {
    for guard in [false, true] {
        let table = format!("del_batch_{}_{}", u8::from(guard), std::process::id());
        let config = config(server, &table, if guard { r#"guard = "event_time""# } else { "" });
        let mut conn = server.fresh(&config).await;
        let sink = MysqlSink::connect(&config).await.expect("connect");
        sink.write_batch(&[upsert(0, "S", "STORED", 4)]).await.expect("stored row");
        let batch = [
            // A: created, deleted, created again → present with the last values.
            upsert(1, "A", "ONE", 1),
            tombstone(2, "A", 2),
            upsert(3, "A", "THREE", 3),
            // B: created then deleted → absent.
            upsert(4, "B", "ONE", 1),
            tombstone(5, "B", 2),
            // S (stored at minute 4): deleted, then created again → present, new values.
            tombstone(6, "S", 6),
            upsert(7, "S", "AGAIN", 7),
            // C: deleted (nothing there), then created → present.
            tombstone(8, "C", 1),
            upsert(9, "C", "NEW", 2),
        ];
        let o = sink.write_batch(&batch).await.expect("mixed batch");
        assert_eq!(
            rows(&mut conn, &table).await,
            pairs(&[("A", "THREE"), ("C", "NEW"), ("S", "AGAIN")]),
            "guard {guard}"
        );
        let counts = (o.inserted, o.updated, o.deleted, o.duplicates);
        if guard {
            // Applied in rounds: A, B inserted, S deleted (C's delete finds nothing); S, C
            // inserted, A, B deleted; A inserted.
            assert_eq!(counts, (5, 0, 3, 1), "{o:?}");
        } else {
            // Only each key's last operation: A, C inserted, S updated, B's delete finds nothing.
            assert_eq!(counts, (2, 1, 0, 6), "{o:?}");
        }
    }
}

async fn a_soft_delete_marks_the_row_with_the_tombstone_time_and_an_upsert_clears_it(server: &Server) {
    let table = format!("del_soft_{}", std::process::id());
    let config = config(server, &table, r#"guard = "event_time", soft_delete_column = "deleted_at""#);
    let mut conn = server.fresh(&config).await;
    let sink = MysqlSink::connect(&config).await.expect("the created table has the soft-delete column");

    sink.write_batch(&[upsert(0, "A", "PICKED_UP", 1), upsert(1, "B", "PICKED_UP", 1)]).await.expect("rows");
    let o = sink.write_batch(&[tombstone(2, "A", 3), tombstone(3, "B", 0)]).await.expect("soft delete");
    assert_eq!(o.deleted, 1, "B's row is newer than its tombstone: {o:?}");
    let mark = |t: &str, s: &str, d: &str| (t.to_owned(), s.to_owned(), d.to_owned());
    assert_eq!(
        marks(&mut conn, &table).await,
        [mark("A", "PICKED_UP", "10:03:00.000000"), mark("B", "PICKED_UP", "-")]
    );
    // A second tombstone keeps the first time.
    let o = sink.write_batch(&[tombstone(4, "A", 4)]).await.expect("again");
    assert_eq!((o.deleted, o.duplicates), (0, 1));
    // An older upsert loses to the row's guard and leaves the mark; a newer one clears it.
    sink.write_batch(&[upsert(5, "A", "LATE", 0)]).await.expect("older");
    assert_eq!(marks(&mut conn, &table).await[0], mark("A", "PICKED_UP", "10:03:00.000000"));
    let o = sink.write_batch(&[upsert(6, "A", "BACK", 8)]).await.expect("newer");
    assert_eq!(o.updated, 1);
    assert_eq!(marks(&mut conn, &table).await[0], mark("A", "BACK", "-"));

    // A live table without the column stops startup, naming the setting.
    conn.query_drop(format!("ALTER TABLE `{table}` DROP COLUMN deleted_at")).await.expect("alter");
    let e = MysqlSink::connect(&MysqlSinkConfig { create_table: false, ..config.clone() })
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("write.soft_delete_column: the table has no column `deleted_at`"), "{e}");
}

async fn a_replayed_delete_below_the_watermark_spares_the_row_written_after_it(server: &Server) {
    // No guard: only the watermark keeps a replayed tombstone from deleting the newer row.
    let table = format!("del_replay_{}", std::process::id());
    let config = config(server, &table, "");
    let mut conn = server.fresh(&config).await;
    let sink = MysqlSink::connect(&config).await.expect("connect").with_consumer_group("deletes");
    sink.write_batch(&[upsert(0, "A", "ONE", 1), tombstone(1, "A", 2)]).await.expect("first");
    sink.write_batch(&[upsert(2, "A", "TWO", 3)]).await.expect("second");
    // A restore replays the first batch.
    let o = sink.write_batch(&[upsert(0, "A", "ONE", 1), tombstone(1, "A", 2)]).await.expect("replay");
    assert_eq!((o.inserted, o.updated, o.deleted, o.duplicates), (0, 0, 0, 2), "{o:?}");
    assert_eq!(rows(&mut conn, &table).await, pairs(&[("A", "TWO")]));
}

/// Each row's key, status and soft-delete mark (`-` when unset).
async fn marks(conn: &mut mysql_async::Conn, table: &str) -> Vec<(String, String, String)> {
    conn.query(format!(
        "SELECT tracking_id, status, COALESCE(DATE_FORMAT(deleted_at, '%H:%i:%s.%f'), '-') FROM `{table}` ORDER BY tracking_id"
    ))
    .await
    .expect("select")
}
