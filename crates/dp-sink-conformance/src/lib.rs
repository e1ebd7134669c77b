//! Conformance kit for [`Sink`] implementations: one call checks a sink against the contract
//! the pipeline relies on, using the sink's real store.
//!
//! # The contract
//! [`Sink::write_batch`] must be
//! - **idempotent**: the same record written twice leaves one copy, because a crash between a
//!   write and its acknowledgement replays the batch (also within one batch, since a partition
//!   re-read after a rebalance can put both copies in one);
//! - **all or nothing**: a batch that fails leaves none of its records stored;
//! - **honest**: `Ok` only when every record is durable (stored, already present or
//!   dead-lettered), with a [`BatchOutcome`] that accounts for every record; an outage is a
//!   *transient* error (the runtime backs off and retries the same batch), a record the store
//!   will never take is dead-lettered by the sink or fails the batch *permanently* (the runtime
//!   then isolates it and calls [`Sink::dead_letter`]).
//!
//! # Using it
//! Implement [`Harness`] over the sink and its store — a fresh table, directory, key prefix —
//! and call [`run`] from a test. Each check writes to its own topics (`<name>.<check>`), so
//! checks do not see each other's rows; a check that fails panics with a message naming it and
//! what it expected versus what it found. Checks a harness cannot drive (it cannot break its
//! store, or the sink takes any payload) are skipped and listed in the [`Report`] with why.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use dp_core::Sink;
//! use dp_sink_conformance::{Harness, anyhow, async_trait, run};
//!
//! struct MyHarness {
//!     sink: Arc<dyn Sink>,
//! }
//!
//! #[async_trait]
//! impl Harness for MyHarness {
//!     fn sink(&self) -> Arc<dyn Sink> {
//!         Arc::clone(&self.sink)
//!     }
//!     async fn stored(&self) -> anyhow::Result<Vec<(String, i32, i64)>> {
//!         // Read the store back: the coordinates of every stored row.
//!         Ok(Vec::new())
//!     }
//! }
//!
//! # async fn example(harness: MyHarness) {
//! let report = run("my-sink", &harness).await;
//! println!("{report}");
//! # }
//! ```
//!
//! [`Proxy`] puts a network service out of reach and back, for sinks whose store is a server.

mod proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use anyhow;
pub use async_trait::async_trait;
use dp_core::{BatchOutcome, DeadLetter, Header, Record, Sink, SinkError};
pub use proxy::Proxy;
use time::format_description::well_known::Rfc3339;

/// A sink under test together with a view of its store.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The sink under test, writing to a store that was empty when the harness was made.
    fn sink(&self) -> Arc<dyn Sink>;

    /// (topic, partition, offset) of every record stored, one entry per stored row (so a
    /// duplicate shows twice).
    async fn stored(&self) -> anyhow::Result<Vec<(String, i32, i64)>>;

    /// Makes the store unreachable so that writes fail transiently; returns false if this
    /// harness cannot.
    async fn break_store(&self) -> bool {
        false
    }

    /// Undoes [`break_store`](Harness::break_store).
    async fn heal_store(&self) {}

    /// A record this sink refuses permanently, at these coordinates; `None` if it accepts any
    /// payload.
    fn poison(&self, topic: &str, partition: i32, offset: i64) -> Option<Record> {
        let _ = (topic, partition, offset);
        None
    }

    /// (topic, partition, offset) of every record dead-lettered so far.
    async fn dead_lettered(&self) -> anyhow::Result<Vec<(String, i32, i64)>> {
        Ok(Vec::new())
    }
}

/// What [`run`] did: the checks that passed and those skipped, with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Checks that ran and passed, in order.
    pub passed: Vec<&'static str>,
    /// Checks that did not run, with the reason.
    pub skipped: Vec<(&'static str, String)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "passed: {}", self.passed.join(", "))?;
        for (check, why) in &self.skipped {
            write!(f, "; skipped {check}: {why}")?;
        }
        Ok(())
    }
}

/// Byte size [`event`] aims at.
const EVENT_BYTES: usize = 500;

/// The namespace of [`event`]'s ids: fixed, so the same coordinates always give the same id.
const EVENT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5c6e_0d59_6c1a_5b7e_9d6f_2b1f_4a3e_8c01);

/// A valid ~500-byte delivery event at these coordinates: a JSON object with an `event_id`
/// unique per coordinates (a UUID v5 of `topic/partition/offset`), `tracking_id`, `status`,
/// `event_time` (RFC 3339) and some padding fields. The record also carries a key (the
/// tracking id), a header and a timestamp.
pub fn event(topic: &str, partition: i32, offset: i64) -> Record {
    const STATUSES: [&str; 5] = ["CREATED", "PICKED_UP", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED"];
    let event_id = uuid::Uuid::new_v5(&EVENT_NAMESPACE, format!("{topic}/{partition}/{offset}").as_bytes());
    // 2024-01-01T00:00:00Z plus a second per offset (wrapping after ~30 years).
    let millis =
        1_704_067_200_000 + offset.rem_euclid(1_000_000_000) * 1000 + i64::from(partition.rem_euclid(1000));
    let event_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "2024-01-01T00:00:00Z".to_owned());
    let tracking_id =
        format!("TRK{:04}{:012}", partition.rem_euclid(10_000), offset.rem_euclid(1_000_000_000_000));
    let status = STATUSES[offset.rem_euclid(STATUSES.len() as i64) as usize];
    let mut value = serde_json::json!({
        "event_id": event_id.to_string(),
        "tracking_id": &tracking_id,
        "status": status,
        "event_time": event_time,
        "carrier": "conformance-express",
        "location": { "facility": format!("HUB-{:03}", offset.rem_euclid(997)), "city": "Utrecht", "country": "NL" },
        "attempt": 1,
    });
    let len = value.to_string().len();
    let filler = EVENT_BYTES.saturating_sub(len + r#","padding":"""#.len());
    value["padding"] = serde_json::Value::String("x".repeat(filler));
    let mut record = Record::new(topic, partition, offset, Some(value.to_string().into_bytes()));
    record.key = Some(tracking_id.into_bytes());
    record.headers = vec![Header { name: "source".into(), value: Some(b"dp-sink-conformance".to_vec()) }];
    record.timestamp_ms = Some(millis);
    record
}

/// How long one sink or harness call may take before the check fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Retries of a batch after the store is healed, and the pause between them.
const HEAL_ATTEMPTS: usize = 30;
const HEAL_PAUSE: Duration = Duration::from_millis(200);

/// Runs every check, each on its own topic names derived from `name` (`<name>.<check>`), so
/// checks do not see each other's rows.
///
/// # Panics
/// When a check fails, with a message naming the check and what was expected versus found.
pub async fn run(name: &str, harness: &dyn Harness) -> Report {
    let sink = harness.sink();
    let mut report = Report::default();
    let checks: [(&'static str, CheckFn); 6] = [
        ("empty_batch", |c| Box::pin(empty_batch(c))),
        ("single_record", |c| Box::pin(single_record(c))),
        ("large_batch", |c| Box::pin(large_batch(c))),
        ("duplicates", |c| Box::pin(duplicates(c))),
        ("transient_failure", |c| Box::pin(transient_failure(c))),
        ("permanent_failure", |c| Box::pin(permanent_failure(c))),
    ];
    for (check, f) in checks {
        let ctx = Ctx { name, check, harness, sink: Arc::clone(&sink) };
        match f(&ctx).await {
            Verdict::Passed => report.passed.push(check),
            Verdict::Skipped(why) => report.skipped.push((check, why)),
        }
    }
    report
}

enum Verdict {
    Passed,
    Skipped(String),
}

type CheckFn =
    for<'a> fn(&'a Ctx<'a>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + Send + 'a>>;

/// One check's view: its name for messages, the harness and the sink.
struct Ctx<'a> {
    name: &'a str,
    check: &'static str,
    harness: &'a dyn Harness,
    sink: Arc<dyn Sink>,
}

/// Stored rows of one topic: (partition, offset) → number of rows.
type Rows = BTreeMap<(i32, i64), usize>;

impl Ctx<'_> {
    /// The topic of this check (`<name>.<check>`).
    fn topic(&self) -> String {
        format!("{}.{}", self.name, self.check)
    }

    fn fail(&self, what: impl fmt::Display) -> ! {
        panic!("sink conformance `{}`: check `{}` failed: {what}", self.name, self.check)
    }

    async fn timed<T>(&self, step: &str, f: impl std::future::Future<Output = T>) -> T {
        match tokio::time::timeout(CALL_TIMEOUT, f).await {
            Ok(v) => v,
            Err(_) => self.fail(format_args!("{step}: no answer within {CALL_TIMEOUT:?}")),
        }
    }

    async fn write(&self, step: &str, records: &[Record]) -> Result<BatchOutcome, SinkError> {
        self.timed(step, self.sink.write_batch(records)).await
    }

    /// Writes and expects `Ok` with an outcome that accounts for every record.
    async fn write_ok(&self, step: &str, records: &[Record]) -> BatchOutcome {
        match self.write(step, records).await {
            Ok(o) => {
                self.expect_total(step, &o, records.len());
                o
            }
            Err(e) => self.fail(format_args!("{step}: expected Ok, found a {} error: {e}", e.kind())),
        }
    }

    fn expect_total(&self, step: &str, o: &BatchOutcome, len: usize) {
        if o.total() != len {
            self.fail(format_args!(
                "{step}: expected an outcome accounting for {len} records, found total {} ({o:?})",
                o.total()
            ));
        }
    }

    fn expect_eq(&self, step: &str, what: &str, found: usize, expected: usize, o: &BatchOutcome) {
        if found != expected {
            self.fail(format_args!("{step}: expected {what} {expected}, found {found} ({o:?})"));
        }
    }

    async fn stored(&self, step: &str, topic: &str) -> Rows {
        let all = match self.timed(step, self.harness.stored()).await {
            Ok(v) => v,
            Err(e) => self.fail(format_args!("{step}: reading the store back failed: {e:#}")),
        };
        let mut rows = Rows::new();
        for (t, p, o) in all {
            if t == topic {
                *rows.entry((p, o)).or_default() += 1;
            }
        }
        rows
    }

    async fn stored_total(&self, step: &str) -> usize {
        match self.timed(step, self.harness.stored()).await {
            Ok(v) => v.len(),
            Err(e) => self.fail(format_args!("{step}: reading the store back failed: {e:#}")),
        }
    }

    /// Expects exactly one stored row for each of `expected` in `topic`, and nothing else.
    async fn expect_stored(&self, step: &str, topic: &str, expected: &BTreeSet<(i32, i64)>) {
        let rows = self.stored(step, topic).await;
        let missing: Vec<_> = expected.iter().filter(|k| !rows.contains_key(k)).collect();
        let repeated: Vec<_> = rows.iter().filter(|(_, n)| **n > 1).collect();
        let unexpected: Vec<_> = rows.keys().filter(|k| !expected.contains(k)).collect();
        if missing.is_empty() && repeated.is_empty() && unexpected.is_empty() {
            return;
        }
        let stored: usize = rows.values().sum();
        self.fail(format_args!(
            "{step}: expected {} records of topic `{topic}` stored once each, found {stored} rows; \
             missing (partition, offset) {}; stored more than once (partition, offset) → rows {}; \
             not expected {}",
            expected.len(),
            sample(&missing),
            sample(&repeated),
            sample(&unexpected),
        ));
    }

    async fn dead_lettered(&self, step: &str, topic: &str) -> Rows {
        let all = match self.timed(step, self.harness.dead_lettered()).await {
            Ok(v) => v,
            Err(e) => self.fail(format_args!("{step}: reading the dead letters back failed: {e:#}")),
        };
        let mut rows = Rows::new();
        for (t, p, o) in all {
            if t == topic {
                *rows.entry((p, o)).or_default() += 1;
            }
        }
        rows
    }
}

/// The first few items of a list, for a failure message.
fn sample<T: fmt::Debug>(items: &[T]) -> String {
    const SHOWN: usize = 10;
    if items.is_empty() {
        return "none".into();
    }
    let head: Vec<String> = items.iter().take(SHOWN).map(|i| format!("{i:?}")).collect();
    if items.len() > SHOWN {
        format!("{} (+{} more)", head.join(", "), items.len() - SHOWN)
    } else {
        head.join(", ")
    }
}

fn coordinates(records: &[Record]) -> BTreeSet<(i32, i64)> {
    records.iter().map(|r| (r.partition, r.offset)).collect()
}

/// An empty batch succeeds, accounts for nothing and stores nothing.
async fn empty_batch(c: &Ctx<'_>) -> Verdict {
    let before = c.stored_total("before the empty batch").await;
    let o = c.write_ok("writing an empty batch", &[]).await;
    c.expect_eq("writing an empty batch", "inserted", o.inserted, 0, &o);
    let after = c.stored_total("after the empty batch").await;
    if after != before {
        c.fail(format_args!("an empty batch changed the store: expected {before} rows, found {after}"));
    }
    Verdict::Passed
}

/// One record is inserted and stored once.
async fn single_record(c: &Ctx<'_>) -> Verdict {
    let topic = c.topic();
    let batch = [event(&topic, 0, 0)];
    let o = c.write_ok("writing one record", &batch).await;
    c.expect_eq("writing one record", "inserted", o.inserted, 1, &o);
    c.expect_stored("after writing one record", &topic, &coordinates(&batch)).await;
    Verdict::Passed
}

/// 5,000 records over four partitions are all inserted, each once.
async fn large_batch(c: &Ctx<'_>) -> Verdict {
    let topic = c.topic();
    let batch: Vec<Record> = (0..5000i64).map(|i| event(&topic, (i % 4) as i32, i / 4)).collect();
    let o = c.write_ok("writing 5,000 records", &batch).await;
    c.expect_eq("writing 5,000 records", "inserted", o.inserted, batch.len(), &o);
    c.expect_stored("after writing 5,000 records", &topic, &coordinates(&batch)).await;
    Verdict::Passed
}

/// Replays, overlapping batches and a record twice in one batch leave one copy each.
async fn duplicates(c: &Ctx<'_>) -> Verdict {
    let topic = c.topic();
    // Offsets move forward per partition as Kafka's do; replays go back over stored ones.
    let range = |from: i64, to: i64| -> Vec<Record> {
        (from..to).flat_map(|o| [event(&topic, 0, o), event(&topic, 1, o)]).collect()
    };
    let first = range(0, 50);
    let o = c.write_ok("writing a first batch", &first).await;
    c.expect_eq("writing a first batch", "inserted", o.inserted, first.len(), &o);

    let step = "replaying the same batch";
    let o = c.write_ok(step, &first).await;
    c.expect_eq(step, "inserted", o.inserted, 0, &o);
    c.expect_eq(step, "duplicates", o.duplicates, first.len(), &o);
    let mut expected = coordinates(&first);
    c.expect_stored("after replaying a batch", &topic, &expected).await;

    let step = "writing a batch half stored, half new";
    let overlap = range(25, 75);
    let o = c.write_ok(step, &overlap).await;
    c.expect_eq(step, "inserted", o.inserted, overlap.len() / 2, &o);
    c.expect_eq(step, "duplicates", o.duplicates, overlap.len() / 2, &o);
    expected.extend(coordinates(&overlap));
    c.expect_stored("after an overlapping batch", &topic, &expected).await;

    let step = "writing the same new record twice in one batch";
    let twice = [event(&topic, 0, 75), event(&topic, 0, 75)];
    let o = c.write_ok(step, &twice).await;
    c.expect_eq(step, "inserted", o.inserted, 1, &o);
    expected.insert((0, 75));
    c.expect_stored("after a batch holding one record twice", &topic, &expected).await;
    Verdict::Passed
}

/// An outage fails the batch transiently and stores none of it; once healed, the same batch
/// goes through, each record stored once.
async fn transient_failure(c: &Ctx<'_>) -> Verdict {
    let topic = c.topic();
    // Written first, so the sink has live connections (or open files) for the outage to break.
    let before: Vec<Record> = (0..10).map(|o| event(&topic, 0, o)).collect();
    c.write_ok("writing a batch before the outage", &before).await;
    if !c.timed("breaking the store", c.harness.break_store()).await {
        return Verdict::Skipped("the harness cannot break its store".into());
    }
    let batch: Vec<Record> = (10..110).map(|o| event(&topic, 0, o)).collect();
    // Twice: the first attempt meets broken connections, the second has to open new ones.
    for attempt in ["first", "second"] {
        match c.write(&format!("writing while the store is broken ({attempt} attempt)"), &batch).await {
            Ok(o) => {
                c.timed("healing the store", c.harness.heal_store()).await;
                c.fail(format_args!(
                    "writing while the store is broken ({attempt} attempt): expected a transient error, \
                     found Ok ({o:?})"
                ))
            }
            Err(e) if !e.is_transient() => {
                c.timed("healing the store", c.harness.heal_store()).await;
                c.fail(format_args!(
                    "writing while the store is broken ({attempt} attempt): expected a transient error, \
                     found a permanent one (the runtime would dead-letter good records): {e}"
                ))
            }
            Err(_) => {}
        }
    }
    c.timed("healing the store", c.harness.heal_store()).await;
    let mut expected = coordinates(&before);
    c.expect_stored("after failed writes (all or nothing)", &topic, &expected).await;

    let mut outcome = None;
    for attempt in 1..=HEAL_ATTEMPTS {
        match c.write(&format!("retrying after the store healed (attempt {attempt})"), &batch).await {
            Ok(o) => {
                outcome = Some(o);
                break;
            }
            Err(e) if !e.is_transient() => c.fail(format_args!(
                "retrying after the store healed (attempt {attempt}): expected Ok or a transient error, \
                 found a permanent one: {e}"
            )),
            Err(_) => tokio::time::sleep(HEAL_PAUSE).await,
        }
    }
    let Some(o) = outcome else {
        c.fail(format_args!("the batch still failed {HEAL_ATTEMPTS} attempts after the store healed"))
    };
    let step = "retrying after the store healed";
    c.expect_total(step, &o, batch.len());
    c.expect_eq(step, "inserted", o.inserted, batch.len(), &o);
    expected.extend(coordinates(&batch));
    c.expect_stored("after the retry", &topic, &expected).await;
    Verdict::Passed
}

/// A record the sink refuses is either dead-lettered by the sink within the batch, or fails the
/// batch permanently, storing none of it, and can then be dead-lettered on its own.
async fn permanent_failure(c: &Ctx<'_>) -> Verdict {
    let topic = c.topic();
    let Some(poison) = c.harness.poison(&topic, 0, 1) else {
        return Verdict::Skipped("the harness has no payload its sink refuses".into());
    };
    let (good0, good2) = (event(&topic, 0, 0), event(&topic, 0, 2));
    let batch = [good0.clone(), poison.clone(), good2.clone()];
    let goods = coordinates(&[good0.clone(), good2.clone()]);
    let step = "writing [good, poison, good]";
    match c.write(step, &batch).await {
        Ok(o) => {
            // The sink dead-letters refused records itself, in the same batch.
            c.expect_total(step, &o, batch.len());
            c.expect_eq(step, "dead_lettered", o.dead_lettered, 1, &o);
            c.expect_eq(step, "inserted", o.inserted, 2, &o);
            c.expect_stored("after a batch with a poison record", &topic, &goods).await;
            expect_dead_lettered(c, "after the sink dead-lettered the poison record", &topic, &poison).await;
            let step = "replaying [good, poison, good]";
            let o = c.write_ok(step, &batch).await;
            c.expect_eq(step, "inserted", o.inserted, 0, &o);
            c.expect_stored("after replaying a batch with a poison record", &topic, &goods).await;
        }
        Err(e) if e.is_transient() => c.fail(format_args!(
            "{step}: expected Ok with the poison record dead-lettered, or a permanent error; found a \
             transient error (the runtime would retry the batch forever): {e}"
        )),
        Err(e) => {
            c.expect_stored("after a batch failed permanently (all or nothing)", &topic, &BTreeSet::new())
                .await;
            let entry = DeadLetter {
                record: poison.clone(),
                error_class: "sink_rejected".into(),
                code: e.code(),
                sqlstate: e.sqlstate().map(str::to_owned),
                reason: e.to_string(),
            };
            match c.timed("dead-lettering the poison record", c.sink.dead_letter(&[entry])).await {
                Ok(()) => {
                    expect_dead_lettered(c, "after dead_letter returned Ok", &topic, &poison).await;
                }
                Err(e) if e.is_transient() => c.fail(format_args!(
                    "dead-lettering the poison record: expected Ok or a permanent error (no dead-letter \
                     destination), found a transient error: {e}"
                )),
                Err(_) => {}
            }
            let step = "writing [good, good] without the poison record";
            let o = c.write_ok(step, &[good0, good2]).await;
            c.expect_eq(step, "inserted", o.inserted, 2, &o);
            c.expect_stored("after writing the good records alone", &topic, &goods).await;
        }
    }
    Verdict::Passed
}

async fn expect_dead_lettered(c: &Ctx<'_>, step: &str, topic: &str, poison: &Record) {
    let dead = c.dead_lettered(step, topic).await;
    if !dead.contains_key(&(poison.partition, poison.offset)) {
        c.fail(format_args!(
            "{step}: expected (partition, offset) {:?} of topic `{topic}` among the dead letters, found {}",
            (poison.partition, poison.offset),
            sample(&dead.keys().collect::<Vec<_>>())
        ));
    }
}

#[cfg(test)]
mod tests;
