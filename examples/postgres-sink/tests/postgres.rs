//! The PostgreSQL sink against a real server: columns, dead letters, replays, error classes and
//! reconnection.

mod common;

use common::{PG_URL, drop_tables, pg, require, scalar, unique};
use dp_core::{DeadLetter, ErrorKind, Record, Sink};
use dp_sink_conformance::event;
use example_postgres_sink::{PostgresSink, PostgresSinkError};

async fn sink(table: &str) -> PostgresSink {
    require(&["postgres"]);
    PostgresSink::connect(PG_URL, table).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_becomes_rows_and_dead_letters_in_one_go_and_a_replay_changes_nothing() {
    let table = unique("pg_batch");
    let sink = sink(&table).await;
    let topic = "orders";
    let mut batch: Vec<Record> = (0..100).map(|o| event(topic, (o % 2) as i32, o / 2)).collect();
    // Without an event_id, the coordinates are the key.
    batch.push(Record::new(topic, 0, 50, Some(br#"{"status":"AT_HUB","tracking_id":"TRK-X"}"#.to_vec())));
    // (payload, class) of records that cannot become rows.
    let bad: Vec<(Option<Vec<u8>>, &str)> = vec![
        (Some(b"this is not json".to_vec()), "invalid_json"),
        (Some(vec![0xff, 0xfe, 0x00, 0x7b]), "not_utf8"),
        (None, "null_value"),
        (Some(b"[1,2,3]".to_vec()), "not_an_object"),
        (Some(br#"{"event_time":"yesterday"}"#.to_vec()), "invalid_timestamp"),
        (Some(br#"{"note":"nul \u0000 inside"}"#.to_vec()), "nul_character"),
    ];
    for (i, (payload, _)) in bad.iter().enumerate() {
        let mut r = Record::new(topic, 1, 50 + i as i64, payload.clone());
        r.key = Some(b"k".to_vec());
        batch.push(r);
    }

    let o = sink.write_batch(&batch).await.expect("write");
    assert_eq!((o.inserted, o.duplicates, o.dead_lettered), (101, 0, bad.len()), "{o:?}");

    let c = pg().await;
    assert_eq!(scalar(&c, &format!(r#"SELECT COUNT(*) FROM "{table}""#)).await, 101);
    // Every mapped column comes from its payload; the coordinates and Kafka timestamp are kept.
    let consistent = scalar(
        &c,
        &format!(
            r#"SELECT COUNT(*) FROM "{table}" WHERE event_id = payload->>'event_id'
               AND tracking_id = payload->>'tracking_id' AND status = payload->>'status'
               AND event_time = (payload->>'event_time')::timestamptz
               AND kafka_topic = 'orders' AND kafka_timestamp IS NOT NULL"#
        ),
    )
    .await;
    assert_eq!(consistent, 100);
    let derived: (String, Option<String>) = {
        let row = c
            .query_one(
                &format!(
                    r#"SELECT tracking_id, event_time::text FROM "{table}" WHERE event_id = 'orders/0/50'"#
                ),
                &[],
            )
            .await
            .expect("the row keyed by its coordinates");
        (row.get(0), row.get(1))
    };
    assert_eq!(derived, ("TRK-X".to_owned(), None));

    let dead = c
        .query(
            &format!(
                r#"SELECT kafka_offset, error_class, payload, reason, record FROM "{table}_dead_letter"
                   ORDER BY kafka_offset"#
            ),
            &[],
        )
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), bad.len());
    for (row, (payload, class)) in dead.iter().zip(&bad) {
        assert_eq!(row.get::<_, &str>(1), *class);
        assert_eq!(row.get::<_, Option<Vec<u8>>>(2), *payload, "the original bytes, exactly");
        assert!(!row.get::<_, &str>(3).is_empty(), "a reason");
        let record = dp_core::decode_record(row.get::<_, &[u8]>(4)).expect("the whole record decodes");
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
    }

    // A replay (a crash between the commit and the acknowledgement) adds nothing.
    let o = sink.write_batch(&batch).await.expect("replay");
    assert_eq!((o.inserted, o.duplicates, o.dead_lettered), (0, 101, bad.len()), "{o:?}");
    assert_eq!(scalar(&c, &format!(r#"SELECT COUNT(*) FROM "{table}""#)).await, 101);
    assert_eq!(scalar(&c, &format!(r#"SELECT COUNT(*) FROM "{table}_dead_letter""#)).await, bad.len() as i64);

    // Another record with a stored event_id (a producer's duplicate) is a duplicate too.
    let mut copy = event(topic, 0, 0);
    copy.offset = 1000;
    let o = sink.write_batch(&[copy]).await.expect("producer duplicate");
    assert_eq!((o.inserted, o.duplicates), (0, 1));
    sink.healthcheck().await.expect("healthy");
    sink.close().await.expect("close");
    drop_tables(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_fails_the_batch_permanently_and_stores_none_of_it() {
    let table = unique("pg_refused");
    let sink = sink(&table).await;
    let c = pg().await;
    // A rule of the database the sink cannot know about.
    c.batch_execute(&format!(
        r#"ALTER TABLE "{table}" ADD CONSTRAINT no_forbidden CHECK (status IS DISTINCT FROM 'FORBIDDEN')"#
    ))
    .await
    .expect("add constraint");
    let forbidden = Record::new("t", 0, 1, Some(br#"{"event_id":"bad","status":"FORBIDDEN"}"#.to_vec()));
    let (good0, good2) = (event("t", 0, 0), event("t", 0, 2));

    let err =
        sink.write_batch(&[good0.clone(), forbidden.clone(), good2.clone()]).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    let shown = err.to_string();
    assert!(
        shown.contains("23514") && shown.contains("no_forbidden"),
        "names the SQLSTATE and the rule: {shown}"
    );
    assert_eq!(scalar(&c, &format!(r#"SELECT COUNT(*) FROM "{table}""#)).await, 0, "all or nothing");

    // What the runtime does next: the refused record alone goes to the dead letters.
    let entry = DeadLetter {
        record: forbidden,
        error_class: "sink_rejected".into(),
        code: None,
        sqlstate: Some("23514".into()),
        reason: shown,
    };
    sink.dead_letter(std::slice::from_ref(&entry)).await.expect("dead-letter");
    sink.dead_letter(&[entry]).await.expect("dead-lettering again is harmless");
    let row = c
        .query_one(&format!(r#"SELECT error_class, sqlstate, kafka_offset FROM "{table}_dead_letter""#), &[])
        .await
        .expect("one dead letter");
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, Option<String>>(1), row.get::<_, i64>(2)),
        ("sink_rejected".to_owned(), Some("23514".to_owned()), 1)
    );
    let o = sink.write_batch(&[good0, good2]).await.expect("the good records alone");
    assert_eq!(o.inserted, 2);
    drop_tables(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_reconnects_after_the_server_kills_its_connection() {
    let table = unique("pg_reconnect");
    require(&["postgres"]);
    // The application name lets the test find the sink's connection.
    let url = format!("{PG_URL}?application_name={table}");
    let sink = PostgresSink::connect(&url, &table).await.expect("connect");
    sink.write_batch(&[event("t", 0, 0)]).await.expect("first write");

    let c = pg().await;
    let killed = scalar(
        &c,
        &format!(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{table}'"
        ),
    )
    .await;
    assert_eq!(killed, 1, "the sink holds one connection");

    // The dead connection may be noticed before the write (then the write reconnects at once)
    // or by the write, which then fails transiently and the retry reconnects.
    let batch: Vec<Record> = (1..11).map(|o| event("t", 0, o)).collect();
    let mut transient = 0;
    let outcome = loop {
        match sink.write_batch(&batch).await {
            Ok(o) => break o,
            Err(e) => {
                assert!(e.is_transient(), "a lost connection is transient: {e}");
                transient += 1;
                assert!(transient <= 1, "the retry must reconnect: {e}");
            }
        }
    };
    assert_eq!(outcome.inserted, 10);
    assert_eq!(scalar(&c, &format!(r#"SELECT COUNT(*) FROM "{table}""#)).await, 11);
    sink.healthcheck().await.expect("healthy again");

    // Even a missing table is retried, not dead-lettered: an operator can bring it back.
    c.batch_execute(&format!(r#"DROP TABLE "{table}""#)).await.expect("drop");
    let err = sink.write_batch(&[event("t", 0, 20)]).await.expect_err("no table");
    assert!(err.is_transient() && err.to_string().contains("42P01"), "{err}");
    drop_tables(&table).await;
}

#[tokio::test]
async fn connect_refuses_bad_table_names_and_never_shows_the_password() {
    require(&["postgres"]);
    let err = PostgresSink::connect(PG_URL, "Bad-Name").await.expect_err("bad name");
    assert!(matches!(err, PostgresSinkError::TableName { .. }), "{err}");
    let err = PostgresSink::connect("postgres://app:hunter2@127.0.0.1:1/test?connect_timeout=2", "t")
        .await
        .expect_err("nothing listens on port 1");
    let shown = err.to_string();
    assert!(matches!(err, PostgresSinkError::Connect { .. }), "{shown}");
    assert!(shown.contains("app@127.0.0.1:1/test") && !shown.contains("hunter2"), "{shown}");
    let err = PostgresSink::connect("postgres://app:hunter2@127.0.0.1:5432/test?sslmode=bogus", "t")
        .await
        .expect_err("invalid url");
    assert!(matches!(err, PostgresSinkError::Url { .. }) && !err.to_string().contains("hunter2"), "{err}");
}
