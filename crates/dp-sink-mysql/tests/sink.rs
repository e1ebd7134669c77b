//! The MySQL sink against the real MariaDB and MySQL (`servers`): the watermark filter,
//! in-batch duplicate offsets and the dead-letter path, on a table without a unique key.

mod servers;

use dp_core::{DeadLetter, Record, Sink, Turn};
use dp_sink_mysql::{MysqlSink, WatermarkMode};
use mysql_async::prelude::Queryable;
use servers::{Server, on_both_servers};

on_both_servers!(
    records_below_the_watermark_and_repeated_offsets_are_written_once,
    under_after_buffer_older_records_stored_after_newer_ones_are_neither_skipped_nor_doubled,
    a_batch_whose_watermark_cannot_be_written_stores_nothing,
    a_batch_waiting_for_its_turn_holds_no_connection_and_writes_nothing_before_it,
);

fn rec(offset: i64) -> Record {
    Record::new("t", 0, offset, Some(format!(r#"{{"status":"S{offset}"}}"#).into_bytes()))
}

async fn sink_without_unique_key(server: &Server, name: &str) -> (MysqlSink, mysql_async::Conn, String) {
    let table = format!("sink_{name}_{}", std::process::id());
    let mut conn = server.conn().await;
    let config = server.fresh_sink_config(&mut conn, &table).await;
    let sink = MysqlSink::connect(&config).await.expect("connect").with_consumer_group("g");
    conn.query_drop(format!("ALTER TABLE `{table}` DROP INDEX `uq_event_id`"))
        .await
        .expect("drop unique key");
    (sink, conn, table)
}

async fn records_below_the_watermark_and_repeated_offsets_are_written_once(server: &Server) {
    let (sink, mut conn, table) = sink_without_unique_key(server, "dedupe").await;
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

/// A record `offset` that the consumer read right after `follows`.
fn after(offset: i64, follows: Option<i64>) -> Record {
    let mut r = rec(offset);
    r.follows = follows;
    r
}

async fn under_after_buffer_older_records_stored_after_newer_ones_are_neither_skipped_nor_doubled(
    server: &Server,
) {
    let (sink, mut conn, table) = sink_without_unique_key(server, "ranges").await;
    let sink = sink.with_watermark_mode(WatermarkMode::Ranges);
    // A partition's new owner stores what it read from Kafka's commit (10) on: 14 is a
    // transaction marker, so 15 follows 13.
    let newer =
        [after(10, None), after(11, Some(10)), after(12, Some(11)), after(13, Some(12)), after(15, Some(13))];
    let o = sink.write_batch(&newer).await.expect("newer");
    assert_eq!(o.inserted, 5);
    let offsets =
        format!("SELECT next_offset, stored_ranges FROM `{table}_offsets` WHERE consumer_group = 'g'");
    let stored: Option<(i64, Option<String>)> = conn.query_first(&offsets).await.expect("offsets");
    assert_eq!(stored, Some((0, Some("10-16".into()))), "10..16 stored, 0..10 not yet");
    // The dead owner's older records, adopted from Redis afterwards (restored records do not
    // know what they follow), and a replay of some of them: stored once, nothing skipped.
    let older: Vec<Record> = (0..10).map(rec).collect();
    let o = sink.write_batch(&older).await.expect("older");
    assert_eq!((o.inserted, o.duplicates), (10, 0), "the older records are not below any watermark");
    let stored: Option<(i64, Option<String>)> = conn.query_first(&offsets).await.expect("offsets");
    assert_eq!(stored, Some((16, None)), "the hole closed: one watermark again");
    let replay: Vec<Record> = (5..16).filter(|o| *o != 14).map(rec).collect();
    let o = sink.write_batch(&replay).await.expect("replay");
    assert_eq!((o.inserted, o.duplicates), (0, 10));
    let rows: Option<u64> = conn.query_first(format!("SELECT COUNT(*) FROM `{table}`")).await.expect("count");
    assert_eq!(rows, Some(15));
    conn.query_drop(format!("DROP TABLE `{table}`, `{table}_dead_letter`, `{table}_offsets`"))
        .await
        .expect("drop");
}

async fn count(conn: &mut mysql_async::Conn, table: &str) -> Option<u64> {
    conn.query_first(format!("SELECT COUNT(*) FROM `{table}`")).await.expect("count")
}

async fn a_batch_waiting_for_its_turn_holds_no_connection_and_writes_nothing_before_it(server: &Server) {
    let table = format!("sink_turn_{}", std::process::id());
    let mut conn = server.conn().await;
    // One connection: a batch waiting for its turn that took it would leave the batch before
    // it none to write (or retry) with.
    let config = dp_sink_mysql::MysqlSinkConfig {
        max_connections: 1,
        connect_timeout: std::time::Duration::from_secs(3),
        ..server.fresh_sink_config(&mut conn, &table).await
    };
    let sink = MysqlSink::connect(&config).await.expect("connect").with_consumer_group("g");
    sink.write_batch(&[rec(0), rec(1)]).await.expect("first batch");

    let (done, turn) = Turn::after();
    let next = [rec(3), rec(4)];
    let waiting = sink.write_batch_in_turn(&next, &turn);
    let before = async {
        // The next batch has prepared by now and waits for its turn.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let o = tokio::time::timeout(std::time::Duration::from_secs(10), sink.write_batch(&[rec(2)]))
            .await
            .expect("the batch before is not held up by the one waiting for its turn")
            .expect("written");
        assert_eq!(o.inserted, 1);
        assert_eq!(
            count(&mut conn, &table).await,
            Some(3),
            "nothing of the waiting batch is written before its turn"
        );
        done.done();
    };
    let (written, ()) = tokio::join!(waiting, before);
    assert_eq!(written.expect("written in its turn").inserted, 2);
    assert_eq!(count(&mut conn, &table).await, Some(5));
    assert_eq!(sink.watermarks(&[("t".into(), 0)]).await.expect("watermarks"), vec![("t".to_string(), 0, 5)]);

    // The batch before failed: the one after it writes nothing and says so.
    let (failed, turn) = Turn::after();
    drop(failed);
    let err = sink.write_batch_in_turn(&[rec(5)], &turn).await.expect_err("its turn never comes");
    assert!(err.is_transient(), "{err}");
    assert_eq!(count(&mut conn, &table).await, Some(5));
    conn.query_drop(format!("DROP TABLE `{table}`, `{table}_dead_letter`, `{table}_offsets`"))
        .await
        .expect("drop");
}

async fn a_batch_whose_watermark_cannot_be_written_stores_nothing(server: &Server) {
    let (sink, mut conn, table) = sink_without_unique_key(server, "atomic").await;
    let o = sink.write_batch(&[rec(0), rec(1)]).await.expect("first batch");
    assert_eq!(o.inserted, 2);
    // From now on the server refuses every change to the watermark row.
    conn.query_drop(format!(
        "CREATE TRIGGER `{table}_refuse` BEFORE UPDATE ON `{table}_offsets` FOR EACH ROW \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'watermark refused by the test'"
    ))
    .await
    .expect("trigger");
    let err = sink.write_batch(&[rec(2), rec(3), rec(4)]).await.expect_err("the watermark cannot move");
    assert!(err.is_transient(), "not a data error: retried, never dead-lettered: {err}");
    let rows: Option<u64> = conn.query_first(format!("SELECT COUNT(*) FROM `{table}`")).await.expect("count");
    assert_eq!(rows, Some(2), "the batch's rows went with its watermark: nothing stored");
    conn.query_drop(format!("DROP TRIGGER `{table}_refuse`")).await.expect("drop trigger");
    let o = sink.write_batch(&[rec(2), rec(3), rec(4)]).await.expect("retried batch");
    assert_eq!(o.inserted, 3);
    conn.query_drop(format!("DROP TABLE `{table}`, `{table}_dead_letter`, `{table}_offsets`"))
        .await
        .expect("drop");
}
