//! Servers in another time zone: MariaDB and MySQL of the test's own whose global `time_zone`
//! is `+05:00`. The pipeline sends UTC and sets its sessions to UTC (`mysql.time_zone`), so the
//! instants read back — from the built-in `event_time` and `ingested_at`, and from declared
//! `TIMESTAMP(3)` and `DATETIME(3)` columns — are the ones sent, not five hours off.

mod common;

use std::time::Duration;

use common::mariadb::OwnMariadb;
use common::mysql::OwnMysql;
use common::{TestEnv, sigterm, wait_for};
use mysql_async::prelude::Queryable;

const EVENTS: u64 = 200;
const ZONE: &str = "--default-time-zone=+05:00";

/// Runs the pipeline twice over one topic into the server at `url` (its database `test`): into
/// the built-in table, then into a table with declared `TIMESTAMP(3)`/`DATETIME(3)` columns, and
/// checks every stored instant in a UTC session.
async fn instants_are_stored_in_utc(name: &str, url: &str) {
    let mut env = TestEnv::new(name);
    env.mysql_url = url.to_owned();
    env.create_topic(2).await;
    let produced = common::as_set(env.produce(EVENTS).await);
    let mut conn = env.mysql().await;
    let zone: String = conn.query_first("SELECT @@global.time_zone").await.expect("zone").expect("row");
    assert_eq!(zone, "+05:00", "the server runs in another time zone");

    // The built-in table: event_time (DATETIME(3), from the payload) and ingested_at (its
    // default, CURRENT_TIMESTAMP(3), computed in the session's zone).
    let mut first = env.spawn(&["run"], &[]);
    wait_for("the built-in table filled", Duration::from_secs(60), || async {
        env.rows_so_far().await >= EVENTS
    })
    .await;
    assert!(sigterm(&mut first, Duration::from_secs(30)).success());
    env.assert_stored_once(&produced).await;

    // Declared columns, in a table the test creates: the same instant as TIMESTAMP(3), as
    // DATETIME(3), and the computed ingest time.
    let declared = format!("{}_declared", env.table);
    conn.query_drop(format!(
        "CREATE TABLE `{declared}` (event_id VARCHAR(64) NOT NULL PRIMARY KEY, at_ts TIMESTAMP(3) NULL, \
         at_dt DATETIME(3) NULL, ingested DATETIME(3) NOT NULL)"
    ))
    .await
    .expect("create the declared table");
    let config = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.toml", env.name));
    std::fs::write(
        &config,
        r#"
[mysql]
write = { mode = "insert", key = ["event_id"] }

[[mysql.columns]]
name = "event_id"
pointer = "/event_id"
type = "string"
max_length = 64
required = true

[[mysql.columns]]
name = "at_ts"
pointer = "/event_time"
type = "timestamp"

[[mysql.columns]]
name = "at_dt"
pointer = "/event_time"
type = "timestamp"

[[mysql.columns]]
name = "ingested"
computed = "ingest_time"
"#,
    )
    .expect("config file");
    let group = format!("{}-declared", env.group);
    let config_arg = config.to_string_lossy().into_owned();
    let mut second = env.spawn(
        &["run", "--config", &config_arg],
        &[("DP_MYSQL__TABLE", declared.as_str()), ("DP_KAFKA__GROUP_ID", group.as_str())],
    );
    let count = format!("SELECT COUNT(*) FROM `{declared}`");
    wait_for("the declared table filled", Duration::from_secs(60), || async {
        env.scalar(&count).await >= EVENTS
    })
    .await;
    assert!(sigterm(&mut second, Duration::from_secs(30)).success());

    // Read back in a UTC session: TIMESTAMP values convert to it, DATETIME values are as stored.
    conn.query_drop("SET time_zone = '+00:00'").await.expect("utc session");
    let millis = "%Y-%m-%dT%H:%i:%s.%f";
    let builtin: Vec<(String, String)> = conn
        .query(format!(
            "SELECT JSON_UNQUOTE(JSON_EXTRACT(payload, '$.event_time')), DATE_FORMAT(event_time, '{millis}') FROM `{}`",
            env.table
        ))
        .await
        .expect("built-in rows");
    let declared_rows: Vec<(String, String, String)> = conn
        .query(format!(
            "SELECT e.sent, DATE_FORMAT(d.at_ts, '{millis}'), DATE_FORMAT(d.at_dt, '{millis}') FROM `{declared}` d \
             JOIN (SELECT event_id, JSON_UNQUOTE(JSON_EXTRACT(payload, '$.event_time')) AS sent FROM `{}`) e \
             USING (event_id)",
            env.table
        ))
        .await
        .expect("declared rows");
    assert_eq!((builtin.len() as u64, declared_rows.len() as u64), (EVENTS, EVENTS));
    // "2026-12-06T10:15:30.123Z" was sent; "2026-12-06T10:15:30.123000" must come back.
    let same = |sent: &str, stored: &str| sent.len() >= 23 && stored.starts_with(&sent[..23]);
    let off: Vec<_> = builtin.iter().filter(|(sent, at)| !same(sent, at)).take(3).collect();
    assert!(off.is_empty(), "built-in event_time shifted (sent, stored): {off:?}");
    let off: Vec<_> =
        declared_rows.iter().filter(|(sent, ts, dt)| !same(sent, ts) || !same(sent, dt)).take(3).collect();
    assert!(off.is_empty(), "declared TIMESTAMP/DATETIME shifted (sent, timestamp, datetime): {off:?}");
    // Ingest times against the server's own UTC clock (UTC_TIMESTAMP ignores every zone).
    let skew = |table: &str, column: &str| {
        format!(
            "SELECT CAST(MAX(ABS(TIMESTAMPDIFF(SECOND, `{column}`, UTC_TIMESTAMP()))) AS UNSIGNED) FROM `{table}`"
        )
    };
    let builtin_skew = env.scalar(&skew(&env.table, "ingested_at")).await;
    let declared_skew = env.scalar(&skew(&declared, "ingested")).await;
    eprintln!(
        "{name}: server time zone {zone}; {EVENTS} events; event times as sent in UTC; ingest times {builtin_skew} s and {declared_skew} s from UTC_TIMESTAMP()"
    );
    assert!(builtin_skew < 300, "ingested_at is {builtin_skew} s off UTC");
    assert!(declared_skew < 300, "the computed ingest_time is {declared_skew} s off UTC");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_mariadb_in_another_time_zone_instants_are_stored_in_utc() {
    let server = OwnMariadb::start(tempfile::tempdir().expect("tmp"), &[ZONE.to_owned()]);
    let mut admin =
        mysql_async::Conn::new(mysql_async::Opts::from_url(&server.url("root", "mysql")).expect("url"))
            .await
            .expect("own mariadb");
    admin.query_drop("CREATE DATABASE test").await.expect("create database");
    instants_are_stored_in_utc("tz_mariadb", &server.url("root", "test")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_mysql_in_another_time_zone_instants_are_stored_in_utc() {
    let server = OwnMysql::start(&[ZONE.to_owned(), "--performance-schema=OFF".to_owned()]);
    let mut admin =
        mysql_async::Conn::new(mysql_async::Opts::from_url(&server.url("root", "mysql")).expect("url"))
            .await
            .expect("own mysql");
    admin.query_drop("CREATE DATABASE test").await.expect("create database");
    instants_are_stored_in_utc("tz_mysql", &server.url("root", "test")).await;
}
