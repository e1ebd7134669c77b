//! Statement and schema faults through the real binary, on MariaDB and on Oracle MySQL
//! (`scripts/mysql.sh start`): when the server refuses the statement for every row — a column
//! dropped or renamed under the running pipeline, a declared column the server generates, a
//! trigger with an ambiguous column (1052, SQLSTATE 23000: the error that once dead-lettered
//! every record of a topic on MySQL) — nothing is dead-lettered: the pipeline stays alive and
//! waits, `/readyz` names the fault, `/metrics` counts it, the log names the server's error at
//! each attempt; once the table is fixed, every event is stored exactly once.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::{TestEnv, as_set, http_address, http_get, metric_sum, mysql, read_log, sigterm, wait_for};
use mysql_async::prelude::Queryable;

const PATIENCE: Duration = Duration::from_secs(60);
/// What the runtime logs at each attempt refused as a statement fault.
const REFUSED: &str = "the sink refuses the statement for every record";

/// The binary, running with retries capped at 1 s, and its HTTP address.
struct Running {
    child: common::Instance,
    address: String,
    log: PathBuf,
}

impl Running {
    async fn start(env: &TestEnv, args: &[&str]) -> Self {
        let child = env.spawn(args, &[("DP_RETRY__MAX_BACKOFF", "1s")]);
        let log = env.log_path();
        wait_for("the http endpoint", PATIENCE, || async { http_address(&log).is_some() }).await;
        let address = http_address(&log).expect("address");
        Self { child, address, log }
    }

    /// Lines of the log that say an attempt was refused as a statement fault and name `error`.
    fn refusals(&self, error: &str) -> usize {
        read_log(&self.log).lines().filter(|l| l.contains(REFUSED) && l.contains(error)).count()
    }

    /// Waits until the pipeline has been refused for every row at least twice since `before`
    /// refusals, with `/readyz` naming `fault` (`error 1054, SQLSTATE 42S22`) and the log the
    /// server's `error` at each attempt; checks that it is alive, counts the fault in its
    /// metrics, and that `stored` rows and no dead letter are in the table.
    async fn waits_on(&mut self, env: &TestEnv, fault: &str, error: &str, before: usize, stored: u64) {
        let line = format!("mysql: statement or schema fault ({fault})");
        let (address, log) = (self.address.clone(), self.log.display().to_string());
        wait_for(&format!("/readyz naming `{line}`"), PATIENCE, || async {
            // Dead letters would be final: fail at the first one rather than time out.
            let dead = env.dead_letters().await;
            assert_eq!(dead, 0, "records dead-lettered while the statement is refused; log: {log}");
            http_get(&address, "/readyz").is_ok_and(|(code, body)| code == 503 && body.contains(&line))
        })
        .await;
        wait_for(&format!("two more attempts logged naming `{error}`"), PATIENCE, || async {
            self.refusals(error) >= before + 2
        })
        .await;
        assert!(self.child.try_wait().expect("wait").is_none(), "alive; log: {}", self.log.display());
        assert_eq!(http_get(&self.address, "/livez").expect("livez").0, 200, "alive for Kubernetes too");
        let metrics = http_get(&self.address, "/metrics").expect("metrics").1;
        assert_eq!(metric_sum(&metrics, "dp_sink_statement_fault"), 1.0, "the gauge is up");
        let code = fault.split([' ', ',']).nth(1).expect("a code");
        assert!(
            metrics.lines().any(|l| l.starts_with("dp_sink_statement_faults_total{")
                && l.contains(&format!("code=\"{code}\""))),
            "dp_sink_statement_faults_total counts code {code}"
        );
        assert_eq!(env.dead_letters().await, 0, "nothing dead-lettered");
        assert_eq!(env.row_count().await, stored, "nothing stored while the statement is refused");
        let log = read_log(&self.log);
        assert!(!log.contains("dead-lettering it"), "no record dead-lettered; log: {}", self.log.display());
    }

    /// Waits until `rows` are stored and the pipeline is ready again, the fault gauge down.
    async fn recovers(&self, env: &TestEnv, rows: u64) {
        wait_for(&format!("{rows} rows stored"), PATIENCE, || async { env.rows_so_far().await >= rows })
            .await;
        wait_for("ready again", PATIENCE, || async {
            http_get(&self.address, "/readyz").is_ok_and(|(code, _)| code == 200)
        })
        .await;
        let metrics = http_get(&self.address, "/metrics").expect("metrics").1;
        assert_eq!(metric_sum(&metrics, "dp_sink_statement_fault"), 0.0, "the gauge is down");
    }

    /// SIGTERM, a clean exit, then every produced event stored once and no dead letter.
    async fn stop(mut self, env: &TestEnv, produced: &BTreeSet<String>) {
        let status = sigterm(&mut self.child, Duration::from_secs(30));
        assert!(status.success(), "clean exit on SIGTERM, got {status}; log: {}", self.log.display());
        let (rows, distinct) = env.assert_stored_once(produced).await;
        eprintln!("{}: {rows} rows, {distinct} distinct, 0 dead letters", env.name);
    }
}

async fn exec(env: &TestEnv, sql: &str) {
    env.mysql().await.query_drop(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_altered_under_the_pipeline_on_mariadb_makes_it_wait_and_dead_letters_nothing() {
    altered_under_the_pipeline(TestEnv::new("stmt_alter")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_altered_under_the_pipeline_on_mysql_makes_it_wait_and_dead_letters_nothing() {
    altered_under_the_pipeline(mysql::env("stmt_alter_my").await).await;
}

/// The built-in table: a column dropped, put back; then renamed, renamed back.
async fn altered_under_the_pipeline(env: TestEnv) {
    const EVENTS: u64 = 100;
    let t = env.table.clone();
    env.create_topic(2).await;
    let mut produced = as_set(env.produce(EVENTS).await);
    let mut run = Running::start(&env, &["run"]).await;
    run.recovers(&env, EVENTS).await;

    exec(&env, &format!("ALTER TABLE `{t}` DROP COLUMN `status`")).await;
    produced.extend(env.produce(EVENTS).await);
    let unknown = "Unknown column 'status'";
    run.waits_on(&env, "error 1054, SQLSTATE 42S22", unknown, 0, EVENTS).await;
    exec(&env, &format!("ALTER TABLE `{t}` ADD COLUMN `status` VARCHAR(32) NULL AFTER `tracking_id`")).await;
    run.recovers(&env, 2 * EVENTS).await;

    exec(&env, &format!("ALTER TABLE `{t}` RENAME COLUMN `status` TO `delivery_status`")).await;
    produced.extend(env.produce(EVENTS).await);
    let before = run.refusals(unknown);
    run.waits_on(&env, "error 1054, SQLSTATE 42S22", unknown, before, 2 * EVENTS).await;
    exec(&env, &format!("ALTER TABLE `{t}` RENAME COLUMN `delivery_status` TO `status`")).await;
    run.recovers(&env, 3 * EVENTS).await;

    run.stop(&env, &produced).await;
    let without = env.scalar(&format!("SELECT COUNT(*) FROM `{t}` WHERE `status` IS NULL")).await;
    // The first events' statuses went with the dropped column; those that waited have theirs.
    assert_eq!(without, EVENTS, "the events that waited were stored whole");
    env.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_mapping_mariadb_refuses_for_every_row_dead_letters_nothing() {
    refused_for_every_row(TestEnv::new("stmt_mapping"), "error 1906, SQLSTATE HY000").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_mapping_mysql_refuses_for_every_row_dead_letters_nothing() {
    refused_for_every_row(mysql::env("stmt_mapping_my").await, "error 3105, SQLSTATE HY000").await;
}

/// A declared mapping (an upsert on `event_id`) onto a table whose `status_label` the server
/// generates: the live-table check takes it, the server refuses to be given a value for every
/// row (`generated`, MariaDB 1906 / MySQL 3105). Made a plain column, then a trigger with an
/// ambiguous column (1052, SQLSTATE 23000) added and dropped.
async fn refused_for_every_row(env: TestEnv, generated: &str) {
    const EVENTS: u64 = 50;
    let t = env.table.clone();
    let helpers = [format!("{t}_a"), format!("{t}_b")];
    env.drop_tables().await;
    exec(
        &env,
        &format!(
            "CREATE TABLE `{t}` (event_id VARCHAR(64) NOT NULL PRIMARY KEY, tracking_id VARCHAR(64) NULL, \
             status VARCHAR(32) NULL, status_label VARCHAR(32) AS (LOWER(status)) STORED)"
        ),
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("mapping.toml");
    std::fs::write(
        &config,
        r#"
        [mysql]
        columns = [
          { name = "event_id", pointer = "/event_id", type = "string", max_length = 64, required = true },
          { name = "tracking_id", pointer = "/tracking_id", type = "string", max_length = 64 },
          { name = "status", pointer = "/status", type = "string", max_length = 32 },
          { name = "status_label", pointer = "/status", type = "string", max_length = 32 },
        ]
        write = { mode = "upsert", key = ["event_id"] }
        "#,
    )
    .expect("config file");
    env.create_topic(2).await;
    let mut produced = as_set(env.produce(EVENTS).await);
    let config = config.to_string_lossy().into_owned();
    let mut run = Running::start(&env, &["--config", &config, "run"]).await;
    run.waits_on(&env, generated, "generated column 'status_label'", 0, 0).await;
    exec(&env, &format!("ALTER TABLE `{t}` MODIFY status_label VARCHAR(32) NULL")).await;
    run.recovers(&env, EVENTS).await;

    for h in &helpers {
        exec(&env, &format!("CREATE TABLE IF NOT EXISTS `{h}` (id INT)")).await;
    }
    let trigger = format!(
        "CREATE TRIGGER `{t}_ambiguous` BEFORE INSERT ON `{t}` FOR EACH ROW \
         SET NEW.tracking_id = (SELECT id FROM `{}`, `{}` LIMIT 1)",
        helpers[0], helpers[1]
    );
    exec(&env, &trigger).await;
    produced.extend(env.produce(EVENTS).await);
    run.waits_on(&env, "error 1052, SQLSTATE 23000", "ambiguous", 0, EVENTS).await;
    exec(&env, &format!("DROP TRIGGER `{t}_ambiguous`")).await;
    run.recovers(&env, 2 * EVENTS).await;

    run.stop(&env, &produced).await;
    let labels = env.scalar(&format!("SELECT COUNT(*) FROM `{t}` WHERE status_label = status")).await;
    assert_eq!(labels, 2 * EVENTS, "every row has the mapped columns");
    env.drop_tables().await;
    for h in &helpers {
        exec(&env, &format!("DROP TABLE `{h}`")).await;
    }
}
