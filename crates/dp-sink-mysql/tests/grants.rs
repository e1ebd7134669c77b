//! The least privilege `docs/security.md` recommends is enough: a MySQL user with only
//! `SELECT, INSERT, UPDATE` on the pipeline's tables (created beforehand by `migrate` under DDL
//! rights) runs every sink path — rows, upserts, dead letters, watermarks, the live-table check
//! — and cannot create a table. A table taking hard deletes needs `DELETE` too: without it a
//! tombstone's batch is a statement fault (retried, nothing dead-lettered) until it is granted. Real MariaDB and MySQL (`servers`); the user is the test's own.
//! On MySQL the user has the server's default authentication, `caching_sha2_password`, and the
//! sink logs in over plain TCP (the client fetches the server's RSA key for the password).

mod servers;

use dp_core::{Record, SecretUrl, Sink};
use dp_sink_mysql::{MysqlSink, MysqlSinkConfig};
use mysql_async::prelude::Queryable;
use servers::{Server, on_both_servers};

on_both_servers!(the_runtime_user_needs_only_select_insert_update_on_its_tables);

async fn the_runtime_user_needs_only_select_insert_update_on_its_tables(server: &Server) {
    let id = std::process::id();
    let (user, password) = (format!("dp_rt_{id}"), format!("pw-{id}-secret"));
    let table = format!("grants_{id}");
    let status = format!("grants_status_{id}");
    let text = format!(
        r#"
        url = "{admin_url}"
        table = "{table}"
        offsets_table = "{table}_offsets"
        [[routes]]
        topic = "status"
        table = "{status}"
        columns = [
          {{ name = "tracking_id", pointer = "/tracking_id", type = "string", max_length = 32, required = true }},
          {{ name = "status", pointer = "/status", type = "string", max_length = 32 }},
          {{ name = "event_time", pointer = "/event_time", type = "timestamp", required = true }},
        ]
        write = {{ mode = "upsert", key = ["tracking_id"], guard = "event_time", delete = "tombstone" }}
        "#,
        admin_url = server.url
    );
    let mut config: MysqlSinkConfig = toml::from_str(&text).expect("config");

    // `migrate`, as the admin.
    let mut admin = server.conn().await;
    let tables = [table.clone(), status.clone(), config.dead_letter_table(), config.offsets_table.clone()];
    for t in &tables {
        admin.query_drop(format!("DROP TABLE IF EXISTS `{t}`")).await.expect("drop");
    }
    for stmt in config.ddl().expect("ddl") {
        admin.query_drop(stmt).await.expect("migrate");
    }
    admin.query_drop(format!("DROP USER IF EXISTS '{user}'@'%'")).await.expect("drop user");
    admin.query_drop(format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")).await.expect("user");
    for t in &tables {
        admin
            .query_drop(format!("GRANT SELECT, INSERT, UPDATE ON `test`.`{t}` TO '{user}'@'%'"))
            .await
            .expect("grant");
    }

    // The pipeline, as the runtime user.
    config.url = SecretUrl::new(server.url_as(&user, &password));
    config.create_table = false;
    let sink = MysqlSink::connect(&config)
        .await
        .expect("the runtime user passes the live-table check")
        .with_consumer_group("grants");
    let status_event = |offset: i64, s: &str, minute: u32| {
        Record::new(
            "status",
            0,
            offset,
            Some(
                format!(
                    r#"{{"tracking_id":"T1","status":"{s}","event_time":"2026-11-24T10:{minute:02}:00Z"}}"#
                )
                .into_bytes(),
            ),
        )
    };
    let batch = [
        Record::new("events", 0, 0, Some(br#"{"event_id":"e1","status":"PICKED_UP"}"#.to_vec())),
        Record::new("events", 0, 1, Some(b"not json".to_vec())),
        status_event(0, "PICKED_UP", 1),
    ];
    let o = sink.write_batch(&batch).await.expect("rows, a dead letter and watermarks");
    assert_eq!((o.inserted, o.dead_lettered), (2, 1));
    let o = sink.write_batch(&[status_event(1, "DELIVERED", 9)]).await.expect("an upsert");
    assert_eq!(o.updated, 1);
    let o = sink.write_batch(&batch).await.expect("a replay (watermark read, locked, raised)");
    assert_eq!(o.inserted + o.updated, 0);

    // A tombstone needs DELETE on its table: refused for the whole batch, as a statement fault
    // the runtime retries; once granted, the same batch deletes the row.
    let mut tombstone = Record::new("status", 0, 2, None);
    tombstone.key = Some(b"T1".to_vec());
    tombstone.timestamp_ms = Some(1_795_514_400_000 + 10 * 60_000);
    let refused = sink.write_batch(std::slice::from_ref(&tombstone)).await.expect_err("no DELETE");
    assert!(refused.is_statement() && refused.to_string().contains("denied"), "{refused}");
    admin
        .query_drop(format!("GRANT DELETE ON `test`.`{status}` TO '{user}'@'%'"))
        .await
        .expect("grant delete");
    let o = sink.write_batch(&[tombstone]).await.expect("deleted once granted");
    assert_eq!((o.deleted, o.dead_lettered), (1, 0));

    // Nothing beyond that: no DDL.
    let mut conn = sink.pool().get_conn().await.expect("conn");
    if server.is_mysql() {
        let plugin: Option<String> =
            admin.exec_first("SELECT plugin FROM mysql.user WHERE user = ?", (&user,)).await.expect("plugin");
        assert_eq!(plugin.as_deref(), Some("caching_sha2_password"));
        let cipher: Option<(String, String)> =
            conn.query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'").await.expect("status");
        assert_eq!(cipher.map(|(_, c)| c).as_deref(), Some(""), "the sink's connection is plain TCP");
    }
    let denied = conn.query_drop(format!("CREATE TABLE `{table}_x` (a INT)")).await.expect_err("no CREATE");
    assert!(denied.to_string().contains("denied"), "{denied}");
    let err = MysqlSink::connect(&MysqlSinkConfig { create_table: true, ..config.clone() })
        .await
        .err()
        .expect("no DDL rights");
    assert!(!err.to_string().contains(&password), "the password is never in an error: {err}");
    drop(conn);
    sink.close().await.expect("close");

    for t in &tables {
        admin.query_drop(format!("DROP TABLE IF EXISTS `{t}`")).await.expect("drop");
    }
    admin.query_drop(format!("DROP USER IF EXISTS '{user}'@'%'")).await.expect("drop user");
}
