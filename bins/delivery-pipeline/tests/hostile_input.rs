//! The hostile-input catalogue, fed to the real binary between valid events: every message ends
//! either as a row or as a dead-letter entry with its class and original bytes; nothing is lost,
//! nothing crashes, no partition stalls.

mod common;

use std::time::Duration;

use common::{KAFKA, TestEnv, sigterm, wait_for};
use mysql_async::prelude::Queryable;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// What must become of a message.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    /// A row whose `event_id` is this (`None`: derived from the Kafka coordinates).
    Row(Option<&'static str>),
    /// A repeat of an earlier `event_id`: no second row.
    Duplicate,
    /// A dead-letter entry of this class.
    Dead(&'static str),
}

struct Case {
    name: &'static str,
    payload: Option<Vec<u8>>,
    outcome: Outcome,
}

fn case(name: &'static str, payload: impl Into<Vec<u8>>, outcome: Outcome) -> Case {
    Case { name, payload: Some(payload.into()), outcome }
}

fn catalogue() -> Vec<Case> {
    use Outcome::*;
    let deep = format!(r#"{{"event_id":"deep","x":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
    let huge = format!(r#"{{"event_id":"huge","pad":"{}"}}"#, "x".repeat(5 * 1024 * 1024));
    vec![
        case("invalid JSON", "this is not json", Dead("invalid_json")),
        case("bytes that are not UTF-8", vec![0xff, 0xfe, 0x00, 0x7b], Dead("not_utf8")),
        case("empty value", "", Dead("empty_value")),
        Case { name: "tombstone (null value)", payload: None, outcome: Dead("null_value") },
        case("a JSON array", "[1,2,3]", Dead("not_an_object")),
        case("a JSON scalar", "42", Dead("not_an_object")),
        case("10,000 levels of nesting", deep, Dead("nesting_too_deep")),
        case("a 5 MB message", huge, Dead("payload_too_large")),
        case("missing event_id", r#"{"tracking_id":"TRK-noid","status":"CREATED"}"#, Row(None)),
        case("event_id that is not a UUID", r#"{"event_id":"not-a-uuid #1"}"#, Row(Some("not-a-uuid #1"))),
        case("an event_id, first time", r#"{"event_id":"twice","status":"CREATED"}"#, Row(Some("twice"))),
        case("the same event_id again", r#"{"event_id":"twice","status":"CREATED"}"#, Duplicate),
        case(
            "a field too long for its column",
            format!(r#"{{"event_id":"long","tracking_id":"{}"}}"#, "x".repeat(65)),
            Dead("field_too_long"),
        ),
        case("status as a number", r#"{"event_id":"num-status","status":5}"#, Dead("invalid_field")),
        case(
            "unparseable event_time",
            r#"{"event_id":"t1","event_time":"yesterday"}"#,
            Dead("invalid_timestamp"),
        ),
        case(
            "event_time beyond year 9999",
            r#"{"event_id":"t2","event_time":"+10000-01-01T00:00:00Z"}"#,
            Dead("invalid_timestamp"),
        ),
        case(
            "far-future event_time",
            r#"{"event_id":"t3","event_time":"2999-12-31T23:59:59Z"}"#,
            Row(Some("t3")),
        ),
        case(
            "pre-1970 event_time",
            r#"{"event_id":"t4","event_time":"1969-07-20T20:17:40Z"}"#,
            Row(Some("t4")),
        ),
        case(
            "SQL metacharacters and quotes",
            r#"{"event_id":"q'\"`;--","tracking_id":"'); DROP TABLE x;--","status":"\\' OR 1=1"}"#,
            Row(Some("q'\"`;--")),
        ),
        case("emoji and 4-byte UTF-8", r#"{"event_id":"emoji","tracking_id":"📦🚚𝄞"}"#, Row(Some("emoji"))),
        case("NUL inside a string", r#"{"event_id":"nul","tracking_id":"TRK\u0000NUL"}"#, Row(Some("nul"))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_message_becomes_a_row_or_a_dead_letter_and_valid_neighbours_are_stored() {
    let env = TestEnv::new("hostile");
    env.create_topic(1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("message.max.bytes", "10000000")
        .create()
        .expect("producer");
    // Each hostile message sits between two valid ones; every message carries a header that is
    // not UTF-8. Offsets follow the order sent (one partition).
    let cases = catalogue();
    let mut sent: Vec<(Option<Vec<u8>>, Outcome, String)> = Vec::new();
    let valid = |n: usize| format!(r#"{{"event_id":"ok-{n}","tracking_id":"TRK{n}","status":"DELIVERED"}}"#);
    for (i, c) in cases.iter().enumerate() {
        sent.push((Some(valid(i).into_bytes()), Outcome::Row(None), format!("valid neighbour {i}")));
        sent.push((c.payload.clone(), c.outcome, c.name.to_string()));
    }
    sent.push((Some(valid(cases.len()).into_bytes()), Outcome::Row(None), "last valid neighbour".into()));
    for (payload, _, name) in &sent {
        let headers = OwnedHeaders::new().insert(Header { key: "binary", value: Some(&[0xc3u8, 0x28][..]) });
        let mut rec = FutureRecord::<str, [u8]>::to(&env.topic).key("k").headers(headers);
        if let Some(p) = payload {
            rec = rec.payload(p.as_slice());
        }
        producer.send(rec, Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("send {name}: {e:?}"));
    }
    let rows_expected = sent.iter().filter(|s| matches!(s.1, Outcome::Row(_))).count() as u64;
    let dead_expected = sent.iter().filter(|s| matches!(s.1, Outcome::Dead(_))).count() as u64;

    let mut child = env.spawn(&["run"], &[]);
    let dead_table = format!("{}_dead_letter", env.table);
    wait_for("every message accounted for", Duration::from_secs(90), || async {
        env.rows_so_far().await >= rows_expected
            && env.scalar(&format!("SELECT COUNT(*) FROM `{dead_table}`")).await >= dead_expected
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = sigterm(&mut child, Duration::from_secs(25));
    assert!(status.success(), "clean exit on SIGTERM, got {status}");

    let mut c = env.mysql().await;
    let rows: Vec<(i64, String, Option<String>, Option<String>)> = c
        .query(format!(
            "SELECT kafka_offset, event_id, tracking_id, DATE_FORMAT(event_time, '%Y-%m-%d %H:%i:%s') FROM `{}` ORDER BY kafka_offset",
            env.table
        ))
        .await
        .expect("rows");
    let dead: Vec<(i64, String, Option<Vec<u8>>, String)> = c
        .query(format!(
            "SELECT kafka_offset, error_class, payload, reason FROM `{dead_table}` ORDER BY kafka_offset"
        ))
        .await
        .expect("dead letters");
    for (offset, (payload, outcome, name)) in sent.iter().enumerate() {
        let offset = offset as i64;
        let row = rows.iter().find(|r| r.0 == offset);
        let entry = dead.iter().find(|d| d.0 == offset);
        match outcome {
            Outcome::Row(id) => {
                let row = row.unwrap_or_else(|| panic!("{name} (offset {offset}): no row"));
                assert!(entry.is_none(), "{name}: also dead-lettered");
                if let Some(id) = id {
                    assert_eq!(row.1, *id, "{name}: event_id stored verbatim");
                } else if name == "missing event_id" {
                    uuid::Uuid::parse_str(&row.1).unwrap_or_else(|_| panic!("{name}: derived id is a UUID"));
                }
            }
            Outcome::Duplicate => assert!(row.is_none() && entry.is_none(), "{name}: stored a second time"),
            Outcome::Dead(class) => {
                let entry = entry.unwrap_or_else(|| panic!("{name} (offset {offset}): no dead-letter entry"));
                assert!(row.is_none(), "{name}: also stored as a row");
                assert_eq!(entry.1, *class, "{name}: error class");
                assert_eq!(&entry.2, payload, "{name}: original bytes kept exactly");
                assert!(!entry.3.is_empty(), "{name}: a reason is given");
            }
        }
    }
    let tracking = |id: &str| rows.iter().find(|r| r.1 == id).and_then(|r| r.2.clone());
    assert_eq!(tracking("q'\"`;--").as_deref(), Some("'); DROP TABLE x;--"));
    assert_eq!(tracking("emoji").as_deref(), Some("📦🚚𝄞"));
    assert_eq!(tracking("nul").as_deref(), Some("TRK\u{0}NUL"));
    let time = |id: &str| rows.iter().find(|r| r.1 == id).and_then(|r| r.3.clone());
    assert_eq!(time("t4").as_deref(), Some("1969-07-20 20:17:40"));
    assert_eq!(time("t3").as_deref(), Some("2999-12-31 23:59:59"));
    assert_eq!(rows.len() as u64, rows_expected);
    assert_eq!(dead.len() as u64, dead_expected);
    assert_eq!(rows.len() + dead.len() + 1, sent.len(), "every message accounted for (one duplicate)");
    eprintln!(
        "hostile catalogue: {} cases among {} messages → {} rows, {} dead letters, 1 duplicate absorbed",
        cases.len(),
        sent.len(),
        rows.len(),
        dead.len()
    );
    assert_eq!(env.redis_keys().await, 0);
    env.drop_tables().await;
}
