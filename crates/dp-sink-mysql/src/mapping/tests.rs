//! Tests of the table model: declared columns, and the built-in preset.

use std::sync::Arc;

use dp_core::{Header, Record};
use mysql_async::Value;
use time::OffsetDateTime;

use super::builtin::{EVENT_ID_MAX, STATUS_MAX};
use super::*;
use crate::sql::{Ident, UpsertSyntax};

fn col(name: &str, pointer: &str, kind: ColumnType) -> ColumnConfig {
    ColumnConfig::pointer(name, pointer, kind)
}

fn computed(name: &str, what: &str) -> ColumnConfig {
    ColumnConfig::computed(name, what)
}

fn key(cols: &[&str]) -> WriteConfig {
    WriteConfig { key: cols.iter().map(|s| (*s).to_owned()).collect(), ..WriteConfig::default() }
}

fn status_mapping() -> ColumnMapping {
    let cols = vec![
        ColumnConfig {
            required: true,
            max_length: Some(16),
            ..col("tracking_id", "/tracking_id", ColumnType::String)
        },
        ColumnConfig { default: Some("UNKNOWN".into()), ..col("status", "/status", ColumnType::String) },
        col("event_time", "/event_time", ColumnType::Timestamp),
        ColumnConfig {
            precision: Some(8),
            scale: Some(2),
            ..col("weight_kg", "/parcel/weight", ColumnType::Decimal)
        },
        col("fragile", "/parcel/fragile", ColumnType::Boolean),
        col("attempts", "/attempts", ColumnType::Integer),
        col("first_item", "/items/0/sku", ColumnType::String),
        col("parcel", "/parcel", ColumnType::Json),
        ColumnConfig { kind: Some(ColumnType::String), ..computed("source", "header:source") },
        computed("kafka_offset", "kafka_offset"),
        computed("ingested_at", "ingest_time"),
    ];
    ColumnMapping::compile(
        "mysql",
        &cols,
        &WriteConfig {
            mode: WriteMode::Upsert,
            key: vec!["tracking_id".into()],
            guard: Some("event_time".into()),
            ..WriteConfig::default()
        },
        1 << 20,
    )
    .expect("compiles")
}

fn rec(payload: &str) -> Record {
    Record {
        topic: Arc::from("t"),
        partition: 2,
        offset: 41,
        key: Some(b"k".to_vec()),
        headers: vec![Header { name: "source".into(), value: Some(b"scanner-7".to_vec()) }],
        timestamp_ms: Some(1_764_000_000_000),
        payload: Some(payload.as_bytes().to_vec()),
        follows: None,
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_764_000_000).expect("time")
}

#[test]
fn pointers_types_headers_and_computed_columns_map() {
    let m = status_mapping();
    let p = r#"{"tracking_id":"TRK-1","event_time":"2026-11-24T10:15:30.5+01:00","parcel":{"weight":12.50,"fragile":true},"attempts":3,"items":[{"sku":"A-1"},{"sku":"B"}],"noise":[1,{"x":null}]}"#;
    let v = m.map(&rec(p), now()).expect("maps");
    assert_eq!(v[0], Value::from("TRK-1"));
    assert_eq!(v[1], Value::from("UNKNOWN"), "absent status takes the default");
    assert_eq!(v[2], Value::Date(2026, 11, 24, 9, 15, 30, 500_000));
    assert_eq!(v[3], Value::from("12.50"), "decimals keep their exact text");
    assert_eq!(v[4], Value::Int(1));
    assert_eq!(v[5], Value::Int(3));
    assert_eq!(v[6], Value::from("A-1"));
    assert_eq!(v[7], Value::from(r#"{"weight":12.50,"fragile":true}"#));
    assert_eq!(v[8], Value::from("scanner-7"));
    assert_eq!(v[9], Value::Int(41));
    assert_eq!(v[10], Value::Date(2025, 11, 24, 16, 0, 0, 0));
    assert!(m.guard_rank(&v).is_some());
}

#[test]
fn absent_and_null_values_are_null_unless_required() {
    let m = status_mapping();
    let v = m.map(&rec(r#"{"tracking_id":"T","status":null,"parcel":null}"#), now()).expect("maps");
    assert_eq!(v[1], Value::from("UNKNOWN"));
    assert_eq!((&v[2], &v[3], &v[7]), (&Value::NULL, &Value::NULL, &Value::NULL));
    assert_eq!(m.guard_rank(&v), None);
    let e = m.map(&rec(r#"{"status":"X"}"#), now()).expect_err("required");
    assert_eq!(e.class, "missing_field");
    assert!(e.reason.contains("tracking_id"), "{}", e.reason);
}

#[test]
fn values_that_do_not_fit_their_column_are_rejected_with_the_column_named() {
    let m = status_mapping();
    let class = |p: &str| {
        let e = m.map(&rec(p), now()).expect_err(p);
        (e.class, e.reason)
    };
    assert_eq!(class(r#"{"tracking_id":5}"#).0, "invalid_field");
    assert_eq!(class(r#"{"tracking_id":"01234567890123456"}"#).0, "field_too_long");
    assert_eq!(class(r#"{"tracking_id":"T","attempts":1.5}"#).0, "out_of_range");
    assert_eq!(class(r#"{"tracking_id":"T","attempts":"3"}"#).0, "invalid_field");
    assert_eq!(class(r#"{"tracking_id":"T","parcel":{"weight":1.234}}"#).0, "out_of_range");
    assert_eq!(class(r#"{"tracking_id":"T","parcel":{"weight":1234567}}"#).0, "out_of_range");
    assert_eq!(class(r#"{"tracking_id":"T","parcel":{"fragile":"yes"}}"#).0, "invalid_field");
    assert_eq!(class(r#"{"tracking_id":"T","event_time":"yesterday"}"#).0, "invalid_timestamp");
    assert_eq!(class(r#"[1]"#).0, "not_an_object");
    assert_eq!(class(r#"{"tracking_id":"T""#).0, "invalid_json");
    let (c, reason) = class(r#"{"tracking_id":"T","attempts":true}"#);
    assert_eq!(c, "invalid_field");
    assert_eq!(reason, "column `attempts` takes an integer, found a boolean");
}

#[test]
fn timestamp_formats() {
    let mapping = |format: &str| {
        ColumnMapping::compile(
            "m",
            &[ColumnConfig {
                format: Some(format.into()),
                required: true,
                ..col("t", "/t", ColumnType::Timestamp)
            }],
            &key(&["t"]),
            1 << 20,
        )
        .expect("compiles")
    };
    let at = Value::Date(2026, 11, 24, 10, 15, 30, 0);
    assert_eq!(mapping("unix_seconds").map(&rec(r#"{"t":1795515330}"#), now()).expect("s")[0], at);
    assert_eq!(mapping("unix_millis").map(&rec(r#"{"t":1795515330000}"#), now()).expect("ms")[0], at);
    let custom = mapping("[year]-[month]-[day] [hour]:[minute]:[second]");
    assert_eq!(custom.map(&rec(r#"{"t":"2026-11-24 10:15:30"}"#), now()).expect("custom")[0], at);
    assert_eq!(
        custom.map(&rec(r#"{"t":"24/11/2026"}"#), now()).expect_err("wrong shape").class,
        "invalid_timestamp"
    );
}

#[test]
fn bad_mappings_are_refused_naming_the_setting() {
    let err = |cols: Vec<ColumnConfig>, write: WriteConfig| {
        ColumnMapping::compile("mysql.routes[1]", &cols, &write, 100).expect_err("refused")
    };
    let id = || ColumnConfig { required: true, ..col("id", "/id", ColumnType::String) };
    assert!(err(vec![], key(&["id"])).starts_with("mysql.routes[1].columns:"));
    assert!(err(vec![id(), col("id", "/x", ColumnType::String)], key(&["id"])).contains("declared twice"));
    assert!(err(vec![col("a-b", "/x", ColumnType::String)], key(&["a"])).contains("plain identifier"));
    assert!(err(vec![id(), col("x", "x", ColumnType::String)], key(&["id"])).contains("must start with `/`"));
    assert!(err(vec![id(), col("x", "/a~2", ColumnType::String)], key(&["id"])).contains("~"));
    let both = ColumnConfig { computed: Some("kafka_offset".into()), ..col("x", "/x", ColumnType::Integer) };
    assert!(err(vec![id(), both], key(&["id"])).contains("exactly one of"));
    let untyped = ColumnConfig { kind: None, ..col("x", "/x", ColumnType::String) };
    assert!(err(vec![id(), untyped], key(&["id"])).contains("set `type`"));
    assert!(err(vec![id(), computed("x", "kafka_nonsense")], key(&["id"])).contains("not one of"));
    let wrong = ColumnConfig { kind: Some(ColumnType::Boolean), ..computed("x", "kafka_offset") };
    assert!(err(vec![id(), wrong], key(&["id"])).contains("is an integer, not a boolean"));
    let dec = col("x", "/x", ColumnType::Decimal);
    assert!(err(vec![id(), dec], key(&["id"])).contains("needs `precision`"));
    let len = ColumnConfig { max_length: Some(3), ..col("x", "/x", ColumnType::Integer) };
    assert!(err(vec![id(), len], key(&["id"])).contains("`max_length` applies to string columns only"));
    let fmt = ColumnConfig { format: Some("[nonsense".into()), ..col("x", "/x", ColumnType::Timestamp) };
    assert!(err(vec![id(), fmt], key(&["id"])).contains("not a valid time format"));
    let dflt = ColumnConfig { default: Some("soon".into()), ..col("x", "/x", ColumnType::Integer) };
    assert!(err(vec![id(), dflt], key(&["id"])).contains("default \"soon\" does not fit"));
    assert!(err(vec![id()], WriteConfig::default()).starts_with("mysql.routes[1].write.key"));
    assert!(err(vec![id()], key(&["nope"])).contains("`nope` is not one of the declared columns"));
    assert!(err(vec![col("id", "/id", ColumnType::String)], key(&["id"])).contains("could be NULL"));
    let guarded = |g: &str, mode| WriteConfig {
        mode,
        key: vec!["id".into()],
        guard: Some(g.into()),
        ..WriteConfig::default()
    };
    let cols = || vec![id(), col("s", "/s", ColumnType::String), col("n", "/n", ColumnType::Integer)];
    assert!(err(cols(), guarded("n", WriteMode::Insert)).contains("only applies to mode = \"upsert\""));
    assert!(err(cols(), guarded("s", WriteMode::Upsert)).contains("must be an integer or a timestamp"));
    let int_id = ColumnConfig { required: true, ..col("id", "/id", ColumnType::Integer) };
    let keyed = vec![int_id, col("s", "/s", ColumnType::String)];
    assert!(err(keyed, guarded("id", WriteMode::Upsert)).contains("is a key column"));
    assert!(
        err(vec![id()], WriteConfig { mode: WriteMode::Upsert, ..key(&["id"]) })
            .contains("nothing to update")
    );
    assert!(
        ColumnMapping::compile("m", &cols(), &guarded("n", WriteMode::Upsert), 100).is_ok(),
        "and a good one compiles"
    );
}

#[test]
fn ddl_has_the_declared_types_and_the_key_as_primary_key() {
    let ddl = status_mapping().create_table(&Ident::new("delivery_status").expect("name"));
    for part in [
        "CREATE TABLE IF NOT EXISTS `delivery_status` (",
        "`tracking_id` VARCHAR(16) NOT NULL",
        "`status` VARCHAR(255) NOT NULL",
        "`event_time` DATETIME(3) NULL",
        "`weight_kg` DECIMAL(8,2) NULL",
        "`fragile` BOOLEAN NULL",
        "`attempts` BIGINT NULL",
        "`parcel` JSON NULL",
        "`kafka_offset` BIGINT NOT NULL",
        "`ingested_at` DATETIME(3) NOT NULL",
        "PRIMARY KEY (`tracking_id`)",
    ] {
        assert!(ddl.contains(part), "{part} missing from\n{ddl}");
    }
}

#[test]
fn guard_ranks_order_times_and_integers() {
    let m = status_mapping();
    let at = |p: &str| m.guard_rank(&m.map(&rec(p), now()).expect("maps"));
    let early = at(r#"{"tracking_id":"T","event_time":"2026-11-24T10:00:00Z"}"#);
    let late = at(r#"{"tracking_id":"T","event_time":"2026-11-24T10:00:00.001Z"}"#);
    let next_year = at(r#"{"tracking_id":"T","event_time":"2027-01-01T00:00:00Z"}"#);
    assert!(early < late && late < next_year);
}

// --- The built-in table: a preset of declared columns.

/// The built-in table's DDL as `sql::create_table` wrote it before the table became a preset:
/// existing tables must keep matching what `migrate` creates.
const BUILTIN_DDL_BEFORE: &str = "CREATE TABLE IF NOT EXISTS `delivery_events` (
  `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  `event_id` VARCHAR(64) NOT NULL,
  `tracking_id` VARCHAR(64) NULL,
  `status` VARCHAR(32) NULL,
  `event_time` DATETIME(3) NULL,
  `payload` JSON NOT NULL,
  `kafka_topic` VARCHAR(249) NOT NULL,
  `kafka_partition` INT NOT NULL,
  `kafka_offset` BIGINT NOT NULL,
  `kafka_timestamp` DATETIME(3) NULL,
  `ingested_at` DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  PRIMARY KEY (`id`),
  UNIQUE KEY `uq_event_id` (`event_id`),
  KEY `ix_tracking_id` (`tracking_id`, `event_time`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// The built-in insert as `sql::insert_rows` wrote it before.
const BUILTIN_INSERT_BEFORE: &str = "INSERT INTO `delivery_events` (`event_id`,`tracking_id`,`status`,`event_time`,`payload`,`kafka_topic`,`kafka_partition`,`kafka_offset`,`kafka_timestamp`) VALUES (?,?,?,?,?,?,?,?,?),(?,?,?,?,?,?,?,?,?) ON DUPLICATE KEY UPDATE `event_id` = `event_id`";

fn builtin() -> ColumnMapping {
    ColumnMapping::builtin("event_id", 1 << 20).expect("the preset compiles")
}

fn brec(payload: Option<&[u8]>) -> Record {
    Record {
        topic: Arc::from("t"),
        partition: 1,
        offset: 7,
        key: None,
        headers: vec![],
        timestamp_ms: None,
        payload: payload.map(<[u8]>::to_vec),
        follows: None,
    }
}

fn bclass(payload: &[u8]) -> &'static str {
    builtin().map(&brec(Some(payload)), now()).expect_err("must be rejected").class
}

#[test]
fn the_builtin_ddl_and_statement_are_what_they_were() {
    let table = Ident::new("delivery_events").expect("name");
    assert_eq!(builtin().create_table(&table), BUILTIN_DDL_BEFORE);
    for syntax in [UpsertSyntax::ValuesFunction, UpsertSyntax::RowAlias] {
        assert_eq!(builtin().statement(&table, syntax, 2), BUILTIN_INSERT_BEFORE);
    }
}

#[test]
fn a_full_event_maps_to_the_builtin_columns() {
    let p = br#"{"event_id":"e-1","tracking_id":"TRK1","status":"IN_TRANSIT","event_time":"2026-11-24T10:15:30.123+01:00","extra":{"a":[1,2]}}"#;
    let mut r = brec(Some(p));
    r.timestamp_ms = Some(1_764_000_000_123);
    let v = builtin().map(&r, now()).expect("maps");
    assert_eq!(
        v,
        [
            Value::from("e-1"),
            Value::from("TRK1"),
            Value::from("IN_TRANSIT"),
            Value::Date(2026, 11, 24, 9, 15, 30, 123_000),
            Value::Bytes(p.to_vec()),
            Value::from("t"),
            Value::Int(1),
            Value::Int(7),
            Value::Date(2025, 11, 24, 16, 0, 0, 123_000),
        ]
    );
    let v = builtin().map(&brec(Some(b"{}")), now()).expect("maps");
    assert_eq!((&v[1], &v[2], &v[3], &v[8]), (&Value::NULL, &Value::NULL, &Value::NULL, &Value::NULL));
}

#[test]
fn a_missing_event_id_is_derived_from_the_coordinates() {
    let r = brec(Some(br#"{"status":"DELIVERED"}"#));
    let a = builtin().map(&r, now()).expect("maps").swap_remove(0);
    assert_eq!(a, builtin().map(&r.clone(), now()).expect("maps").swap_remove(0), "the same on redelivery");
    assert_eq!(a, Value::from(kafka_uuid(&r).to_string()));
    let mut other = r.clone();
    other.offset += 1;
    assert_ne!(a, Value::from(kafka_uuid(&other).to_string()));
    let null = builtin().map(&brec(Some(br#"{"event_id":null}"#)), now()).expect("maps").swap_remove(0);
    assert_eq!(null, Value::from(kafka_uuid(&r).to_string()), "null counts as missing");
}

#[test]
fn the_event_id_field_is_configurable_and_escapes_are_read() {
    let m = ColumnMapping::builtin("id", 100).expect("compiles");
    let v = m.map(&brec(Some(br#"{"id":"a\"b","status":"X\u0000Y","event_id":5}"#)), now()).expect("maps");
    assert_eq!(v[0], Value::from("a\"b"), "event_id is not the id field here");
    assert_eq!(v[2], Value::from("X\0Y"));
    let odd = ColumnMapping::builtin("a/b~c", 100).expect("compiles");
    let v = odd.map(&brec(Some(br#"{"a/b~c":"k"}"#)), now()).expect("maps");
    assert_eq!(v[0], Value::from("k"), "a field name with / and ~ is one pointer segment");
    let escaped_key = builtin().map(&brec(Some(br#"{"stat\u0075s":"X","tracking_id":"t"}"#)), now());
    assert_eq!(escaped_key.expect("maps")[2], Value::from("X"), "a key written with escapes is read");
}

#[test]
fn bad_records_are_classified_as_before() {
    assert_eq!(builtin().map(&brec(None), now()).expect_err("null").class, "null_value");
    assert_eq!(bclass(b""), "empty_value");
    assert_eq!(bclass(&[0xff, 0xfe, b'{']), "not_utf8");
    assert_eq!(bclass(b"{not json"), "invalid_json");
    assert_eq!(bclass(br#"{"a":1} trailing"#), "invalid_json");
    assert_eq!(bclass(b"[1,2]"), "not_an_object");
    assert_eq!(bclass(b"\"text\""), "not_an_object");
    assert_eq!(bclass(b"42"), "not_an_object");
    assert_eq!(bclass(br#"{"status":5}"#), "invalid_field");
    assert_eq!(bclass(br#"{"event_id":""}"#), "invalid_field");
    assert_eq!(bclass(br#"{"event_id":"  "}"#), "invalid_field");
    assert_eq!(bclass(br#"{"tracking_id":{"x":1}}"#), "invalid_field");
    let long = format!(r#"{{"status":"{}"}}"#, "x".repeat(STATUS_MAX + 1));
    assert_eq!(bclass(long.as_bytes()), "field_too_long");
    let long = format!(r#"{{"event_id":"{}"}}"#, "x".repeat(EVENT_ID_MAX + 1));
    assert_eq!(bclass(long.as_bytes()), "field_too_long");
    assert_eq!(bclass(br#"{"event_time":"yesterday"}"#), "invalid_timestamp");
    assert_eq!(bclass(br#"{"event_time":"99999-01-01T00:00:00Z"}"#), "invalid_timestamp");
    assert_eq!(bclass(br#"{"event_time":"0999-12-31T23:59:59Z"}"#), "invalid_timestamp");
    let deep = "[".repeat(10_000);
    assert_eq!(bclass(format!(r#"{{"x":{deep}}}"#).as_bytes()), "invalid_json");
    let nested = |n: usize| format!(r#"{{"x":{}{}}}"#, "[".repeat(n), "]".repeat(n));
    assert_eq!(bclass(nested(10_000).as_bytes()), "nesting_too_deep");
    assert_eq!(bclass(nested(MAX_JSON_DEPTH).as_bytes()), "nesting_too_deep", "the object is a level");
    assert!(builtin().map(&brec(Some(nested(MAX_JSON_DEPTH - 1).as_bytes())), now()).is_ok());
    assert!(
        builtin().map(&brec(Some(br#"{"s":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"[[[["}"#)), now()).is_ok(),
        "brackets inside strings do not count"
    );
    let small = ColumnMapping::builtin("event_id", 10).expect("compiles");
    assert_eq!(
        small.map(&brec(Some(br#"{"a":"0123456789"}"#)), now()).expect_err("big").class,
        "payload_too_large"
    );
    let e = builtin().map(&brec(Some(br#"{"status":5}"#)), now()).expect_err("rejected");
    assert_eq!(e.reason, "column `status` takes a string, found a number");
}

#[test]
fn multibyte_characters_count_as_one() {
    let s = "🚚".repeat(STATUS_MAX);
    let v =
        builtin().map(&brec(Some(format!(r#"{{"status":"{s}"}}"#).as_bytes())), now()).expect("32 emoji fit");
    assert_eq!(v[2], Value::from(s.as_str()));
}

#[test]
fn old_and_new_dates_within_datetime_range_are_accepted() {
    let v = builtin().map(&brec(Some(br#"{"event_time":"1969-07-20T20:17:40Z"}"#)), now()).expect("pre-1970");
    assert_eq!(v[3], Value::Date(1969, 7, 20, 20, 17, 40, 0));
    assert!(DateTimeParts::from_unix_millis(1_764_000_000_000).is_some());
    assert!(DateTimeParts::from_unix_millis(i64::MAX).is_none());
}

#[test]
fn fallbacks_are_checked_and_fill_only_missing_values() {
    let id = || ColumnConfig { fallback: Some("kafka_uuid".into()), ..col("id", "/id", ColumnType::String) };
    let m = ColumnMapping::compile("m", &[id(), col("s", "/s", ColumnType::String)], &key(&["id"]), 100)
        .expect("a fallback makes the key column never NULL");
    assert_eq!(m.map(&rec(r#"{"id":"x"}"#), now()).expect("maps")[0], Value::from("x"));
    let err = |c: ColumnConfig| ColumnMapping::compile("m", &[c], &key(&["id"]), 100).expect_err("refused");
    assert!(
        err(ColumnConfig { fallback: Some("nope".into()), ..id() })
            .contains("fallback = `nope` is not one of")
    );
    assert!(err(ColumnConfig { fallback: Some("header:x".into()), ..id() }).contains("a header cannot be"));
    assert!(
        err(ColumnConfig { fallback: Some("kafka_offset".into()), ..id() })
            .contains("fallback = `kafka_offset` is an integer, not a string")
    );
    let computed_fb = ColumnConfig { fallback: Some("kafka_uuid".into()), ..computed("id", "kafka_key") };
    assert!(err(computed_fb).contains("applies to pointer columns only"));
}

/// `tracking_id`, `status`, `event_time`, upserted on `tracking_id`, guarded by `event_time`
/// or not.
fn status3(guard: bool) -> ColumnMapping {
    status3_with(WriteConfig::default(), guard)
}

/// `status3` with the other write settings of `write`.
fn status3_with(write: WriteConfig, guard: bool) -> ColumnMapping {
    let cols = [
        ColumnConfig { required: true, ..col("tracking_id", "/tracking_id", ColumnType::String) },
        col("status", "/status", ColumnType::String),
        col("event_time", "/event_time", ColumnType::Timestamp),
    ];
    let write = WriteConfig {
        mode: WriteMode::Upsert,
        key: vec!["tracking_id".into()],
        guard: guard.then(|| "event_time".into()),
        ..write
    };
    ColumnMapping::compile("mysql", &cols, &write, 1 << 20).expect("compiles")
}

#[test]
fn of_rows_sharing_a_key_the_newest_guard_wins_and_ties_keep_the_first() {
    let m = status3(true);
    let row = |k: &str, s: &str, minute: u8| {
        vec![Value::from(k), Value::from(s), Value::Date(2026, 11, 24, 10, minute, 0, 0)]
    };
    let rows = [
        row("A", "PICKED_UP", 1),
        row("B", "PICKED_UP", 1),
        row("A", "DELIVERED", 9),
        row("A", "IN_TRANSIT", 5),
        row("B", "DUPLICATE", 1),
        vec![Value::from("C"), Value::from("X"), Value::NULL],
        row("C", "Y", 0),
    ];
    let refs: Vec<&[Value]> = rows.iter().map(Vec::as_slice).collect();
    assert_eq!(m.winners(&refs), [false, true, true, false, false, false, true]);
    let unguarded = status3(false);
    assert_eq!(unguarded.winners(&refs), [false, false, false, true, true, false, true], "the last wins");
}

/// `status3` with `write.delete = "tombstone"`, and the soft-delete column when named.
fn deleting(guard: bool, soft: Option<&str>) -> ColumnMapping {
    let write = WriteConfig {
        delete: DeleteMode::Tombstone,
        soft_delete_column: soft.map(str::to_owned),
        ..WriteConfig::default()
    };
    status3_with(write, guard)
}

/// A tombstone produced a minute after `now()`.
fn tombstone(key: Option<&[u8]>) -> Record {
    Record { key: key.map(<[u8]>::to_vec), payload: None, timestamp_ms: Some(1_764_000_060_000), ..rec("") }
}

fn delete_of(m: &ColumnMapping, r: &Record) -> Result<Delete, Rejection> {
    match m.map_op(r, now())? {
        Op::Delete(d) => Ok(d),
        Op::Write(row) => panic!("a tombstone became a row: {row:?}"),
    }
}

#[test]
fn a_tombstone_names_its_row_by_the_key_text_or_the_key_objects_fields() {
    let m = deleting(false, None);
    assert_eq!(delete_of(&m, &tombstone(Some(b"TRK-1"))).map(|d| d.key), Ok(vec![Value::from("TRK-1")]));
    assert_eq!(
        delete_of(&m, &tombstone(Some(br#""TRK-1""#))).map(|d| d.key),
        Ok(vec![Value::from("TRK-1")]),
        "a key serialised as a JSON string"
    );
    assert_eq!(
        delete_of(&m, &tombstone(Some(br#"{"tracking_id": "TRK-2", "other": 1}"#))).map(|d| d.key),
        Ok(vec![Value::from("TRK-2")])
    );
    // The soft-delete time is the Kafka timestamp; without one, the time of mapping.
    let at = |r: &Record| delete_of(&m, r).map(|d| d.at);
    assert_eq!(at(&tombstone(Some(b"k"))), Ok(Value::Date(2025, 11, 24, 16, 1, 0, 0)));
    assert_eq!(
        at(&Record { timestamp_ms: None, ..tombstone(Some(b"k")) }),
        Ok(Value::Date(2025, 11, 24, 16, 0, 0, 0))
    );
    let class = |r: &Record| delete_of(&m, r).map_err(|e| e.class);
    assert_eq!(class(&tombstone(None)), Err("invalid_key"), "no key names no row");
    assert_eq!(class(&tombstone(Some(b"  "))), Err("invalid_key"), "a blank key");
    assert_eq!(class(&tombstone(Some(br#"{"other": 1}"#))), Err("invalid_key"), "no field of the key's name");
    assert_eq!(class(&tombstone(Some(br#"{"tracking_id": null}"#))), Err("invalid_key"));
    assert_eq!(class(&tombstone(Some(br#"{"tracking_id": "x""#))), Err("invalid_key"), "broken JSON");
    assert_eq!(class(&tombstone(Some(&[0xff, 0xfe]))), Err("invalid_key"), "not UTF-8");
    // A value is still a row; a tombstone on a table without deletes is still refused.
    assert!(matches!(m.map_op(&rec(r#"{"tracking_id": "A"}"#), now()), Ok(Op::Write(_))));
    assert_eq!(status3(false).map_op(&tombstone(Some(b"k")), now()).map_err(|e| e.class), Err("null_value"));
}

#[test]
fn a_key_of_several_columns_takes_a_json_object_and_computed_key_columns_their_own_value() {
    let cols = [
        ColumnConfig { required: true, ..col("tenant", "/tenant", ColumnType::Integer) },
        ColumnConfig { required: true, ..col("order_id", "/order_id", ColumnType::String) },
        computed("source", "header:source"),
        ColumnConfig { required: true, ..col("state", "/state", ColumnType::String) },
    ];
    let write = WriteConfig {
        mode: WriteMode::Upsert,
        key: vec!["tenant".into(), "order_id".into(), "source".into()],
        delete: DeleteMode::Tombstone,
        ..WriteConfig::default()
    };
    let cols_source_required = {
        let mut c = cols.to_vec();
        c[2].kind = Some(ColumnType::String);
        c[2].required = true;
        c
    };
    let m = ColumnMapping::compile("mysql", &cols_source_required, &write, 1 << 20).expect("compiles");
    let key = delete_of(&m, &tombstone(Some(br#"{"order_id": "O-9", "tenant": 7}"#))).map(|d| d.key);
    assert_eq!(key, Ok(vec![Value::Int(7), Value::from("O-9"), Value::from("scanner-7")]));
    let e = delete_of(&m, &tombstone(Some(b"O-9"))).map_err(|e| e.reason);
    assert!(e.is_err_and(|r| r.contains("not a JSON object with a field per key column (tenant, order_id)")));
    let e =
        delete_of(&m, &tombstone(Some(br#"{"order_id": "O-9", "tenant": "seven"}"#))).map_err(|e| e.class);
    assert_eq!(e, Err("invalid_field"), "a key field of the wrong type");
}

#[test]
fn a_tombstone_compares_its_kafka_timestamp_with_a_timestamp_guard() {
    let m = deleting(true, Some("deleted_at"));
    assert_eq!(
        delete_of(&m, &tombstone(Some(b"k"))).map(|d| d.guard),
        Ok(Some(Value::Date(2025, 11, 24, 16, 1, 0, 0)))
    );
    let no_time = Record { timestamp_ms: None, ..tombstone(Some(b"k")) };
    assert_eq!(
        delete_of(&m, &no_time).map(|d| d.guard),
        Ok(Some(Value::Date(9999, 12, 31, 23, 59, 59, 999_000))),
        "without a timestamp it applies"
    );
    assert_eq!(m.soft_delete_column(), Some("deleted_at"));
    let ddl = m.create_table(&Ident::new("s").expect("ident"));
    assert!(ddl.contains("  `deleted_at` DATETIME(3) NULL,\n"), "{ddl}");
    assert!(
        m.statement(&Ident::new("s").expect("ident"), UpsertSyntax::ValuesFunction, 1)
            .contains("`deleted_at` = IF(")
    );
}

#[test]
fn deletes_are_refused_where_a_tombstone_could_not_name_or_compare_its_row() {
    let cols = |guard_kind: ColumnType| {
        vec![
            ColumnConfig { required: true, ..col("id", "/id", ColumnType::String) },
            col("seq", "/seq", guard_kind),
            computed("offset", "kafka_offset"),
        ]
    };
    let err = |cols: &[ColumnConfig], write: WriteConfig| {
        ColumnMapping::compile("mysql", cols, &write, 1 << 20).expect_err("refused")
    };
    let write = |mode, key: &str, guard: Option<&str>, soft: Option<&str>| WriteConfig {
        mode,
        key: vec![key.into()],
        guard: guard.map(str::to_owned),
        delete: DeleteMode::Tombstone,
        soft_delete_column: soft.map(str::to_owned),
    };
    let up = WriteMode::Upsert;
    assert!(
        err(&cols(ColumnType::Integer), write(WriteMode::Insert, "id", None, None))
            .contains("set mode = \"upsert\"")
    );
    assert!(
        err(&cols(ColumnType::Integer), write(up, "id", Some("seq"), None))
            .contains("guard `seq` is an integer")
    );
    assert!(
        err(&cols(ColumnType::Integer), write(up, "offset", None, None))
            .contains("key column `offset` is computed")
    );
    assert!(
        err(&cols(ColumnType::Integer), write(up, "id", None, Some("seq")))
            .contains("`seq` is a declared column")
    );
    assert!(
        err(&cols(ColumnType::Integer), write(up, "id", None, Some("bad-name")))
            .contains("not a plain identifier")
    );
    let soft_alone = WriteConfig { soft_delete_column: Some("d".into()), ..write(up, "id", None, None) };
    let soft_alone = WriteConfig { delete: DeleteMode::None, ..soft_alone };
    assert!(err(&cols(ColumnType::Integer), soft_alone).contains("only with delete = \"tombstone\""));
    // A pointer's fallback does not stand for the guard: an integer guard from the payload is
    // refused even with one.
    let mut with_fallback = cols(ColumnType::Integer);
    with_fallback[1].fallback = Some("kafka_offset".into());
    assert!(err(&with_fallback, write(up, "id", Some("seq"), None)).contains("guard `seq` is an integer"));
    // A timestamp guard, and an integer guard computed from the record, are fine.
    for (kind, guard) in [(ColumnType::Timestamp, "seq"), (ColumnType::Integer, "offset")] {
        assert!(
            ColumnMapping::compile("mysql", &cols(kind), &write(up, "id", Some(guard), None), 1 << 20)
                .is_ok()
        );
    }
}

#[test]
fn upserts_and_deletes_of_one_key_apply_in_rounds_that_end_as_offset_order_would() {
    let row = |k: &str, minute: u8| {
        Op::Write(vec![Value::from(k), Value::from("S"), Value::Date(2026, 1, 1, 0, minute, 0, 0)])
    };
    let del = |k: &str, minute: u8| {
        Op::Delete(Delete {
            key: vec![Value::from(k)],
            guard: Some(Value::Date(2026, 1, 1, 0, minute, 0, 0)),
            at: Value::NULL,
        })
    };
    let keys = |r: &Round| {
        let w: Vec<String> = r.writes.iter().map(|w| format!("{:?}", w[0])).collect();
        let d: Vec<String> = r.deletes.iter().map(|d| format!("{:?}", d.key[0])).collect();
        (w, d)
    };
    // Without a guard the last operation of each key decides.
    let ops = vec![row("A", 1), del("A", 2), row("B", 3), row("A", 4), del("B", 5), row("C", 6)];
    let rounds = deleting(false, None).rounds(ops.clone());
    assert_eq!(rounds.len(), 1);
    let (w, d) = keys(&rounds[0]);
    assert_eq!((w.len(), d.len()), (2, 1));
    assert_eq!(rounds[0].writes[0][2], Value::Date(2026, 1, 1, 0, 4, 0, 0), "A's last upsert");
    // With a guard: A is upsert(1), delete(2), upsert(4) → three rounds; B upsert then
    // delete → two; C one. Consecutive deletes keep the largest guard.
    let rounds = deleting(true, None).rounds(ops);
    assert_eq!(rounds.len(), 3);
    assert_eq!((rounds[0].writes.len(), rounds[0].deletes.len()), (3, 0));
    assert_eq!((rounds[1].writes.len(), rounds[1].deletes.len()), (0, 2));
    assert_eq!((rounds[2].writes.len(), rounds[2].deletes.len()), (1, 0));
    let rounds =
        deleting(true, None).rounds(vec![del("A", 3), del("A", 7), del("A", 5), row("A", 9), row("A", 8)]);
    assert_eq!(rounds.len(), 2);
    assert_eq!(rounds[0].deletes[0].guard, Some(Value::Date(2026, 1, 1, 0, 7, 0, 0)));
    assert_eq!(rounds[1].writes[0][2], Value::Date(2026, 1, 1, 0, 9, 0, 0));
    // Only upserts: one round, the winners.
    let rounds = deleting(true, None).rounds(vec![row("A", 2), row("A", 1)]);
    assert_eq!(
        rounds,
        vec![Round {
            writes: vec![vec![Value::from("A"), Value::from("S"), Value::Date(2026, 1, 1, 0, 2, 0, 0)]],
            deletes: vec![]
        }]
    );
}

#[test]
fn soft_deletes_keep_the_delete_that_would_set_the_mark() {
    let row = |minute: u8| {
        Op::Write(vec![Value::from("A"), Value::from("S"), Value::Date(2026, 1, 1, 0, minute, 0, 0)])
    };
    let del = |minute: u8| {
        Op::Delete(Delete {
            key: vec![Value::from("A")],
            guard: Some(Value::Date(2026, 1, 1, 0, minute, 0, 0)),
            at: Value::Date(2026, 1, 1, 0, minute, 0, 0),
        })
    };
    let shape = |rounds: &[Round]| -> Vec<(usize, usize)> {
        rounds.iter().map(|r| (r.writes.len(), r.deletes.len())).collect()
    };
    // No guard: the last upsert, then the first delete after it.
    let rounds = deleting(false, Some("d")).rounds(vec![del(1), row(2), del(3), del(4)]);
    assert_eq!(shape(&rounds), [(1, 0), (0, 1)]);
    assert_eq!(rounds[1].deletes[0].at, Value::Date(2026, 1, 1, 0, 3, 0, 0));
    // With a guard, every delete is its own round: which sets the mark depends on the row.
    let rounds = deleting(true, Some("d")).rounds(vec![row(2), del(1), del(5)]);
    assert_eq!(shape(&rounds), [(1, 0), (0, 1), (0, 1)]);
}
