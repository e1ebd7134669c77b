//! The command line as a user meets it: the README's demo, help, exit codes, check-config.

mod common;

use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_delivery-pipeline"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DP_INSTANCE_ID", "cli-test");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run delivery-pipeline")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn the_demo_delivers_every_event_and_leaves_redis_empty() {
    common::require_services();
    let o = run(&["demo", "--count", "3000", "--partitions", "3"], &[("DP_INSTANCE_ID", "cli-demo")]);
    let out = text(&o);
    assert!(o.status.success(), "demo failed:\n{out}");
    assert!(out.contains("events produced        3000"), "{out}");
    assert!(out.contains("rows in MySQL          3000"), "{out}");
    assert!(out.contains("Redis keys left        0"), "{out}");
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["run", "migrate", "check-config", "produce", "demo", "offsets", "dlq"] {
        let o = run(&[sub, "--help"], &[]);
        assert!(o.status.success(), "{sub} --help failed");
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage: delivery-pipeline"), "{sub}");
    }
}

/// The allocator's options are the binary's own (`malloc_conf` in main.rs), and jemalloc reads
/// the unprefixed `MALLOC_CONF`: it is the process's `malloc`, the C libraries' too. Were it
/// built with its `_rjem_` prefix again, `MALLOC_CONF` would print nothing here, and a
/// `malloc_conf` under the wrong name would leave jemalloc's defaults (docs/PERFORMANCE.md).
/// Linux only: elsewhere (macOS) tikv-jemalloc-sys keeps its prefix and the system's `malloc`.
#[cfg(target_os = "linux")]
#[test]
fn jemalloc_serves_malloc_with_the_binarys_options() {
    let o = run(&["--help"], &[("MALLOC_CONF", "stats_print:true")]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for option in ["opt.background_thread: true", "opt.dirty_decay_ms: 300", "opt.muzzy_decay_ms: 0"] {
        assert!(out.contains(option), "{option} missing from jemalloc's statistics:\n{out}");
    }
}

#[test]
fn invalid_configuration_exits_2_with_one_line_naming_the_key() {
    // (variable, value, what the line must start with after "error: invalid configuration: ")
    let cases = [
        ("DP_NOPE", "1", "nope: unknown field"),
        ("DP_MYSQL__URL", "not a url", "mysql.url:"),
        ("DP_REDIS__URL", "http://127.0.0.1:6379", "redis.url:"),
        ("DP_KAFKA__BROKERS", "localhost", "kafka.brokers:"),
        ("DP_BUFFER__MAX_ROWS", "0", "buffer.max_rows:"),
        ("DP_BUFFER__MAX_ROWS", "-5", "buffer.max_rows:"),
        ("DP_BUFFER__FLUSH_INTERVAL", "0s", "buffer.flush_interval"),
        ("DP_MYSQL__TABLE", "x; DROP TABLE y", "mysql.table"),
        ("DP_KAFKA__REVOCATION_TIMEOUT", "60s", "kafka.revocation_timeout"),
    ];
    for (name, value, expected) in cases {
        let o = run(&["run"], &[(name, value)]);
        assert_eq!(o.status.code(), Some(2), "{name}={value}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{name}={value}: {err}");
        let line = err.strip_prefix("error: invalid configuration: ").unwrap_or_else(|| panic!("{err}"));
        assert!(line.starts_with(expected), "{name}={value}: {err}");
    }
}

#[test]
fn an_unreachable_service_fails_startup_naming_its_key() {
    let o = run(
        &["run"],
        &[("DP_MYSQL__URL", "mysql://root@127.0.0.1:1/test"), ("DP_MYSQL__CONNECT_TIMEOUT", "2s")],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: mysql.url: cannot connect to mysql at mysql://root@127.0.0.1:1/test"),
        "{err}"
    );
    let o = run(&["run"], &[("DP_REDIS__URL", "redis://127.0.0.1:1"), ("DP_REDIS__CONNECT_TIMEOUT", "1s")]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.lines().last().unwrap_or_default().starts_with("error: redis.url: cannot connect"), "{err}");
}

#[test]
fn migrate_dry_run_prints_the_ddl() {
    let o = run(&["migrate", "--dry-run"], &[("DP_MYSQL__TABLE", "shipments")]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(out.contains("CREATE TABLE IF NOT EXISTS `shipments`"), "{out}");
    assert!(out.contains("UNIQUE KEY `uq_event_id` (`event_id`)"), "{out}");
    assert!(out.contains("CREATE TABLE IF NOT EXISTS `shipments_dead_letter`"), "{out}");
}

#[test]
fn migrate_dry_run_prints_the_ddl_of_declared_columns_and_routes() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        r#"
        [kafka]
        topics = ["events", "status"]
        [[mysql.routes]]
        topic = "status"
        table = "shipment_status"
        columns = [
          { name = "tracking_id", pointer = "/tracking_id", type = "string", max_length = 64, required = true },
          { name = "status", pointer = "/status", type = "string", max_length = 32 },
          { name = "event_time", pointer = "/event_time", type = "timestamp", format = "unix_millis" },
          { name = "paid", pointer = "/payment/paid", type = "boolean", default = false },
        ]
        write = { mode = "upsert", key = ["tracking_id"], guard = "event_time" }
        "#,
    )
    .expect("write config");
    let path = file.to_string_lossy().into_owned();
    let o = run(&["--config", &path, "migrate", "--dry-run"], &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for part in [
        "CREATE TABLE IF NOT EXISTS `delivery_events`",
        "CREATE TABLE IF NOT EXISTS `shipment_status` (\n  `tracking_id` VARCHAR(64) NOT NULL,\n  `status` VARCHAR(32) NULL,\n  \
         `event_time` DATETIME(3) NULL,\n  `paid` BOOLEAN NOT NULL,\n  PRIMARY KEY (`tracking_id`)\n)",
    ] {
        assert!(out.contains(part), "{part}\nmissing from\n{out}");
    }
    // A route to a topic the group does not read is refused before anything runs.
    let o = run(&["--config", &path, "migrate", "--dry-run"], &[("DP_KAFKA__TOPICS", "events")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("mysql.routes[0].topic: `status` is not one of kafka.topics"), "{}", text(&o));
}

#[test]
fn check_config_redacts_passwords_and_reports_unreachable_services() {
    let o = run(
        &["check-config"],
        &[
            ("DP_MYSQL__URL", "mysql://app:hunter2@127.0.0.1:1/test"),
            ("DP_MYSQL__CONNECT_TIMEOUT", "2s"),
            ("DP_KAFKA__BROKERS", "127.0.0.1:1"),
            ("DP_REDIS__URL", "redis://127.0.0.1:1"),
            ("DP_REDIS__CONNECT_TIMEOUT", "1s"),
        ],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(!out.contains("hunter2"), "password printed:\n{out}");
    assert!(out.contains("mysql://app:***@127.0.0.1:1/test"), "{out}");
    for svc in ["kafka", "redis", "mysql"] {
        assert!(out.contains(&format!("FAIL  {svc}")), "{svc} must be reported unreachable:\n{out}");
    }
}
