//! Schema Registry formats end to end: Avro, Protobuf and JSON Schema values (and Avro keys)
//! written by Confluent's own serializers (the Python `confluent-kafka` package) go through
//! Kafka into three MySQL tables, with the registry down for the first 20 s.
//!
//! The registry is `tests/support/schema_registry.py`, a process of the test's own with basic
//! authentication: it is killed (SIGKILL) after the records are produced, so the pipeline starts
//! without it. While it is down nothing may be written or dead-lettered; once it is back every
//! row must be exactly what its record says, two tombstones with Avro keys must delete their
//! rows, the four undecodable records must be dead-lettered as `undecodable`, and each schema
//! id must have been fetched exactly once. Then the unknown schema is registered, and
//! `dlq replay` stores the two records that named it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{KAFKA, TestEnv};
use delivery_pipeline::produce::ensure_topic;
use mysql_async::prelude::Queryable;

const SUPPORT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support");
const REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/requirements.txt");
const COUNT: u64 = 300;
const AUTH: &str = "pipeline:s3cret";
/// What the produced schemas get from the registry, in the order the producer registers them.
const AVRO_V1: u32 = 1;
const AVRO_KEY: u32 = 2;
const AVRO_V2: u32 = 3;
const PROTO: u32 = 5;
const JSON_SCHEMA: u32 = 6;
/// The id of the framed records no registry holds.
const UNKNOWN: u32 = 9999;
/// The Avro records a tombstone deletes (`TOMBSTONES` in the producer).
const DELETED: [u64; 2] = [10, 211];

/// The test's registry process.
struct Registry {
    port: u16,
    state: PathBuf,
    child: Option<Child>,
}

impl Registry {
    fn start(state: PathBuf) -> Self {
        let mut r = Self { port: common::free_port(), state, child: None };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process on the same port and state, and waits until it listens.
    fn restart(&mut self) {
        let child = Command::new("python3")
            .arg(Path::new(SUPPORT).join("schema_registry.py"))
            .args(["--port", &self.port.to_string(), "--auth", AUTH, "--state"])
            .arg(&self.state)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}); python3 -m pip install -r {REQUIREMENTS}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the test registry did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            common::sigkill(&mut c);
            let _ = c.wait();
        }
    }

    /// How often each request was made (`GET /schemas/ids/1` → 1), over every run.
    fn requests(&self) -> BTreeMap<String, u64> {
        let text = std::fs::read_to_string(&self.state).expect("registry state");
        let state: serde_json::Value = serde_json::from_str(&text).expect("state json");
        serde_json::from_value(state["requests"].clone()).expect("requests")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One row of the Avro table, as text.
type AvroRow = (
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<String>,
);

fn expected_avro(i: u64) -> AvroRow {
    let cents = i as i64 * 7 - 100;
    let price = format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.abs() / 100, cents.abs() % 100);
    let weight = (!i.is_multiple_of(5)).then(|| format!("{}.{:02}", i / 4, (i % 4) * 25));
    let at = format!("2026-12-01 08:{:02}:{:02}.{:03}", i / 60, i % 60, i % 1000);
    let day = format!("2026-12-{:02}", 1 + i % 30);
    let status = ["NEW", "PICKED_UP", "DELIVERED"][(i % 3) as usize].to_owned();
    let zip = i.is_multiple_of(2).then(|| format!("{i:05}"));
    let note = (i >= COUNT / 2 && !i.is_multiple_of(4)).then(|| format!("note {i}"));
    (
        format!("A{i:05}"),
        format!("K{i:05}"),
        weight,
        price,
        at,
        day,
        status,
        format!("City{}", i % 7),
        zip,
        (i % 3) as i64,
        note,
    )
}

/// One row of the Protobuf table.
type ProtoRow = (String, Option<i64>, String, Option<String>, Option<String>, Option<i64>, Option<i64>);

fn expected_proto(i: u64) -> ProtoRow {
    let status = ["NEW", "PICKED_UP", "DELIVERED"][(i % 3) as usize].to_owned();
    if i % 10 == 9 {
        // A `Correction`: message index [1], only an id and a status.
        return (format!("P{i:05}"), None, status, None, None, None, None);
    }
    (
        format!("P{i:05}"),
        Some((1_i64 << 40) + i as i64),
        status,
        Some(format!("2026-12-01 {:02}:{:02}:00.000", 8 + i / 60, i % 60)),
        Some(format!("Hub{}", i % 4)),
        Some((i % 2) as i64),
        Some((i % 3) as i64),
    )
}

fn expected_json(i: u64) -> (String, i64, Option<String>) {
    (format!("J{i:05}"), (i * 3) as i64, (i % 2 == 1).then(|| format!("SKU-{i}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_protobuf_and_json_schema_records_arrive_exactly_through_a_registry_that_was_down() {
    let env = TestEnv::new("schema_registry");
    let (avro_topic, proto_topic, json_topic) =
        (format!("{}-avro", env.topic), format!("{}-proto", env.topic), format!("{}-json", env.topic));
    let (avro_table, proto_table, json_table) =
        (format!("{}_avro", env.table), format!("{}_proto", env.table), format!("{}_json", env.table));
    for t in [&avro_topic, &proto_topic, &json_topic] {
        ensure_topic(KAFKA, t, 3).await.expect("topic");
    }
    let state = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-registry.json", env.name));
    let _ = std::fs::remove_file(&state);
    let mut registry = Registry::start(state.clone());

    let run = Command::new("python3")
        .arg(Path::new(SUPPORT).join("schema_registry_produce.py"))
        .args(["--brokers", KAFKA, "--registry", &registry.url(), "--auth", AUTH])
        .args(["--avro-topic", &avro_topic, "--proto-topic", &proto_topic, "--json-topic", &json_topic])
        .args(["--count", &COUNT.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); python3 -m pip install -r {REQUIREMENTS}"));
    assert!(
        run.status.success(),
        "the confluent-kafka producer failed ({}): {}\n(a missing module: python3 -m pip install -r {REQUIREMENTS})",
        run.status,
        String::from_utf8_lossy(&run.stderr).trim()
    );
    let produced: BTreeMap<String, u64> = serde_json::from_slice(&run.stdout).expect("producer summary");
    let total: u64 = produced.values().sum();
    assert_eq!(total, 3 * COUNT + 4 + 2, "{produced:?}");
    registry.kill();

    let password = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-registry-password", env.name));
    std::fs::write(&password, "s3cret\n").expect("password file");
    let mut config = env.config();
    config.kafka.topics = vec![avro_topic.clone(), proto_topic.clone(), json_topic.clone()];
    config.schema_registry.url = vec![registry.url()];
    config.schema_registry.username = Some("pipeline".into());
    config.schema_registry.password_file = Some(password.clone());
    config.schema_registry.request_timeout = Duration::from_secs(2);
    config.retry.max_backoff = Duration::from_secs(2);
    config.buffer.max_rows = 200;
    let routes: toml::Table = toml::from_str(&format!(
        r#"
        [[routes]]
        topic = "{avro_topic}"
        table = "{avro_table}"
        format = "avro"
        key_format = "avro"
        write = {{ mode = "upsert", key = ["k"], delete = "tombstone" }}
        columns = [
          {{ name = "id", pointer = "/id", type = "string", max_length = 16, required = true }},
          {{ name = "k", computed = "kafka_key", type = "string", max_length = 16, required = true }},
          {{ name = "weight", pointer = "/weight", type = "decimal", precision = 8, scale = 2 }},
          {{ name = "price", pointer = "/price", type = "decimal", precision = 9, scale = 2, required = true }},
          {{ name = "at", pointer = "/at", type = "timestamp", required = true }},
          {{ name = "day", pointer = "/day", type = "string", max_length = 10 }},
          {{ name = "status", pointer = "/status", type = "string", max_length = 16 }},
          {{ name = "city", pointer = "/address/city", type = "string", max_length = 16 }},
          {{ name = "zip", pointer = "/address/zip", type = "string", max_length = 8 }},
          {{ name = "tags", pointer = "/tags", type = "json" }},
          {{ name = "note", pointer = "/note", type = "string", max_length = 16 }},
        ]

        [[routes]]
        topic = "{proto_topic}"
        table = "{proto_table}"
        format = "protobuf"
        write = {{ mode = "upsert", key = ["id"] }}
        columns = [
          {{ name = "id", pointer = "/id", type = "string", max_length = 16, required = true }},
          {{ name = "grams", pointer = "/grams", type = "integer" }},
          {{ name = "status", pointer = "/status", type = "string", max_length = 16 }},
          {{ name = "at", pointer = "/at", type = "timestamp" }},
          {{ name = "city", pointer = "/to/city", type = "string", max_length = 16 }},
          {{ name = "fragile", pointer = "/fragile", type = "boolean" }},
          {{ name = "legs", pointer = "/legs", type = "json" }},
        ]

        [[routes]]
        topic = "{json_topic}"
        table = "{json_table}"
        format = "json_schema"
        write = {{ mode = "upsert", key = ["id"] }}
        columns = [
          {{ name = "id", pointer = "/id", type = "string", max_length = 16, required = true }},
          {{ name = "qty", pointer = "/qty", type = "integer", required = true }},
          {{ name = "sku", pointer = "/sku", type = "string", max_length = 16 }},
        ]
        "#
    ))
    .expect("toml");
    config.mysql.routes = routes["routes"].clone().try_into().expect("routes");
    let mut c = env.mysql().await;
    for t in [&avro_table, &proto_table, &json_table] {
        c.query_drop(format!("DROP TABLE IF EXISTS `{t}`")).await.expect("drop");
    }

    let pipeline = dp_assembly::build(&config).await.expect("build");
    let stats = pipeline.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(pipeline.run(async {
        let _ = stopped.await;
    }));

    // The registry is down: every batch fails as an outage; nothing is written or
    // dead-lettered, whatever the flush interval and retries do meanwhile.
    let dead_letter_table = format!("{}_dead_letter", env.table);
    let down_until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < down_until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for t in [&avro_table, &proto_table, &json_table, &dead_letter_table] {
            let rows: Option<u64> =
                c.query_first(format!("SELECT COUNT(*) FROM `{t}`")).await.expect("count");
            assert_eq!(rows, Some(0), "{t} while the registry is down");
        }
    }
    let s = stats.snapshot();
    assert_eq!(
        (s.delivered(), s.dead_lettered),
        (0, 0),
        "nothing delivered while the registry is down: {s:?}"
    );
    assert!(s.retries > 0, "the batches failed as outages and were retried: {s:?}");

    registry.restart();
    let deadline = Instant::now() + Duration::from_secs(120);
    while stats.snapshot().delivered() < total {
        assert!(
            Instant::now() < deadline,
            "no progress after the registry came back: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(());
    let summary = running.await.expect("join").expect("clean run");
    let s = summary.stats;
    assert_eq!(s.dead_lettered, 4, "{s:?}");
    // A tombstone in its upsert's batch leaves nothing to delete (the upsert is skipped: two
    // duplicates); one in a later batch deletes the row it inserted. Either way the row is
    // gone (checked below).
    assert_eq!((s.inserted - s.deleted, s.deleted + s.duplicates / 2), (3 * COUNT - 2, 2), "{s:?}");

    let avro: Vec<AvroRow> = c
        .query(format!(
            "SELECT id, k, CAST(weight AS CHAR), CAST(price AS CHAR), CAST(at AS CHAR), day, status, city, zip, \
             JSON_LENGTH(tags), note FROM `{avro_table}` ORDER BY id"
        ))
        .await
        .expect("avro rows");
    let expected: Vec<AvroRow> = (0..COUNT).filter(|i| !DELETED.contains(i)).map(expected_avro).collect();
    assert_eq!(avro, expected, "the Avro table, less the rows the Avro-keyed tombstones deleted");
    let proto: Vec<ProtoRow> = c
        .query(format!(
            "SELECT id, grams, status, CAST(at AS CHAR), city, fragile, JSON_LENGTH(legs) FROM `{proto_table}` ORDER BY id"
        ))
        .await
        .expect("protobuf rows");
    assert_eq!(proto, (0..COUNT).map(expected_proto).collect::<Vec<_>>(), "the Protobuf table");
    let json: Vec<(String, i64, Option<String>)> =
        c.query(format!("SELECT id, qty, sku FROM `{json_table}` ORDER BY id")).await.expect("json rows");
    assert_eq!(json, (0..COUNT).map(expected_json).collect::<Vec<_>>(), "the JSON Schema table");

    let dead: Vec<(String, String)> = c
        .query(format!("SELECT error_class, reason FROM `{dead_letter_table}` ORDER BY kafka_offset"))
        .await
        .expect("dead letters");
    assert!(dead.iter().all(|(class, _)| class == "undecodable"), "{dead:?}");
    let reasons: Vec<&str> = dead.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(
        reasons.iter().filter(|r| r.contains(&format!("schema {UNKNOWN} is not in the registry"))).count(),
        2,
        "{reasons:?}"
    );
    assert_eq!(reasons.iter().filter(|r| r.contains("not an Avro datum")).count(), 1, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| r.contains("magic byte 123")).count(), 1, "{reasons:?}");

    // Each schema, the unknown one too, was asked for once: ids are cached for good.
    let asked = registry.requests();
    for id in [AVRO_V1, AVRO_KEY, AVRO_V2, PROTO, JSON_SCHEMA, UNKNOWN] {
        assert_eq!(asked.get(&format!("GET /schemas/ids/{id}")), Some(&1), "schema {id}: {asked:?}");
    }
    assert_eq!(
        asked.get("GET /subjects/common%2Faddress.proto/versions/1"),
        Some(&1),
        "the Protobuf import, by its subject: {asked:?}"
    );
    assert_eq!(env.redis_keys().await, 0);

    // The schema the two unknown-id records name is registered after all (their body is a
    // datum of the first Avro schema): `dlq replay`, with the same settings, decodes and stores
    // them; the cut-short datum and the plain JSON stay dead letters.
    registry.kill();
    let text = std::fs::read_to_string(&state).expect("registry state");
    let mut saved: serde_json::Value = serde_json::from_str(&text).expect("state json");
    let schemas = saved["schemas"].as_array_mut().expect("schemas");
    let first = schemas[0].clone();
    while schemas.len() < UNKNOWN as usize {
        schemas.push(serde_json::json!({"schema": "\"null\"", "schemaType": "AVRO", "references": []}));
    }
    schemas[UNKNOWN as usize - 1] = first;
    std::fs::write(&state, saved.to_string()).expect("write state");
    registry.restart();
    let filter = delivery_pipeline::dlq::Filter { class: Some("undecodable".into()), ..Default::default() };
    let report = delivery_pipeline::dlq::replay(&config.mysql, &config.schema_registry, &filter, false)
        .await
        .expect("replay");
    assert_eq!((report.entries, report.inserted, report.still_refused), (4, 2, 2), "{report:?}");
    let replayed: Vec<(String, String)> = c
        .query(format!("SELECT k, id FROM `{avro_table}` WHERE k LIKE 'BAD%' ORDER BY k"))
        .await
        .expect("replayed rows");
    assert_eq!(
        replayed,
        [("BAD0".to_owned(), "A00000".to_owned()), ("BAD1".to_owned(), "A00000".to_owned())]
    );
    let _ = std::fs::remove_file(&password);
    let _ = std::fs::remove_file(&state);
    eprintln!("schema registry: {produced:?} produced; {s:?}; registry requests {asked:?}");
}
