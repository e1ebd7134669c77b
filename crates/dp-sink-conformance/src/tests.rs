//! The kit against an in-memory reference sink, and against sinks with one flaw each: the
//! reference passes, every flawed one is caught by the check named in `should_panic`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

type Coords = (String, i32, i64);

/// What the sink does with a record whose payload is `poison`.
#[derive(Clone, Copy, PartialEq)]
enum Poison {
    /// Fails the batch permanently; [`Sink::dead_letter`] stores it.
    Refuse,
    /// Dead-letters it within the batch.
    DeadLetter,
    /// Fails the batch permanently and has no dead-letter destination.
    RefuseWithoutDestination,
}

/// One way to break the contract.
#[derive(Clone, Copy, PartialEq)]
enum Flaw {
    None,
    /// Stores every record it is given, replays included.
    NotIdempotent,
    /// Skips records already stored, but not a second copy within one batch.
    DuplicatesWithinBatch,
    /// Says Ok while the store is down (and stores nothing).
    OkWhileBroken,
    /// Reports an outage as a permanent error.
    OutageIsPermanent,
    /// Reports a poison record as a transient error.
    PoisonIsTransient,
    /// Stores the good records of a batch it fails.
    PartialWrites,
    /// Leaves duplicates out of the outcome.
    UncountedDuplicates,
    /// Stays broken for good once broken.
    NeverRecovers,
}

struct MemorySink {
    rows: Mutex<Vec<Coords>>,
    dead: Mutex<Vec<Coords>>,
    broken: AtomicBool,
    /// Set once broken, for [`Flaw::NeverRecovers`].
    ever_broken: AtomicBool,
    poison: Poison,
    flaw: Flaw,
}

fn coords(r: &Record) -> Coords {
    (r.topic.to_string(), r.partition, r.offset)
}

fn is_poison(r: &Record) -> bool {
    r.payload.as_deref() == Some(b"poison")
}

#[async_trait]
impl Sink for MemorySink {
    async fn write_batch(&self, records: &[Record]) -> Result<BatchOutcome, SinkError> {
        let down = self.broken.load(Ordering::SeqCst)
            || (self.flaw == Flaw::NeverRecovers && self.ever_broken.load(Ordering::SeqCst));
        if down {
            return match self.flaw {
                Flaw::OkWhileBroken => {
                    Ok(BatchOutcome { inserted: records.len(), ..BatchOutcome::default() })
                }
                Flaw::OutageIsPermanent => Err(SinkError::permanent("store is down")),
                _ => Err(SinkError::transient("store is down")),
            };
        }
        let mut rows = self.rows.lock().map_err(|_| SinkError::permanent("poisoned lock"))?;
        if self.poison != Poison::DeadLetter && records.iter().any(is_poison) {
            if self.flaw == Flaw::PartialWrites {
                rows.extend(records.iter().filter(|r| !is_poison(r)).map(coords));
            }
            return Err(if self.flaw == Flaw::PoisonIsTransient {
                SinkError::transient("record refused")
            } else {
                SinkError::permanent("record refused")
            });
        }
        let before: HashSet<Coords> = rows.iter().cloned().collect();
        let mut stored = before.clone();
        let mut o = BatchOutcome::default();
        let mut dead = Vec::new();
        for r in records {
            let c = coords(r);
            if is_poison(r) {
                dead.push(c);
                o.dead_lettered += 1;
            } else if self.flaw == Flaw::NotIdempotent
                || (self.flaw == Flaw::DuplicatesWithinBatch && !before.contains(&c))
                || stored.insert(c.clone())
            {
                rows.push(c);
                o.inserted += 1;
            } else if self.flaw != Flaw::UncountedDuplicates {
                o.duplicates += 1;
            }
        }
        self.dead.lock().map_err(|_| SinkError::permanent("poisoned lock"))?.extend(dead);
        Ok(o)
    }

    async fn dead_letter(&self, entries: &[DeadLetter]) -> Result<(), SinkError> {
        if self.poison == Poison::RefuseWithoutDestination {
            return Err(SinkError::permanent("this sink has no dead-letter destination"));
        }
        let mut dead = self.dead.lock().map_err(|_| SinkError::permanent("poisoned lock"))?;
        dead.extend(entries.iter().map(|d| coords(&d.record)));
        Ok(())
    }
}

struct MemoryHarness {
    sink: Arc<MemorySink>,
    can_break: bool,
    has_poison: bool,
}

impl MemoryHarness {
    fn new(poison: Poison, flaw: Flaw) -> Self {
        Self {
            sink: Arc::new(MemorySink {
                rows: Mutex::default(),
                dead: Mutex::default(),
                broken: AtomicBool::new(false),
                ever_broken: AtomicBool::new(false),
                poison,
                flaw,
            }),
            can_break: true,
            has_poison: true,
        }
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    fn sink(&self) -> Arc<dyn Sink> {
        self.sink.clone()
    }

    async fn stored(&self) -> anyhow::Result<Vec<(String, i32, i64)>> {
        Ok(self.sink.rows.lock().map_err(|_| anyhow::anyhow!("poisoned lock"))?.clone())
    }

    async fn break_store(&self) -> bool {
        if self.can_break {
            self.sink.broken.store(true, Ordering::SeqCst);
            self.sink.ever_broken.store(true, Ordering::SeqCst);
        }
        self.can_break
    }

    async fn heal_store(&self) {
        self.sink.broken.store(false, Ordering::SeqCst);
    }

    fn poison(&self, topic: &str, partition: i32, offset: i64) -> Option<Record> {
        self.has_poison.then(|| Record::new(topic, partition, offset, Some(b"poison".to_vec())))
    }

    async fn dead_lettered(&self) -> anyhow::Result<Vec<(String, i32, i64)>> {
        Ok(self.sink.dead.lock().map_err(|_| anyhow::anyhow!("poisoned lock"))?.clone())
    }
}

const ALL: [&str; 6] =
    ["empty_batch", "single_record", "large_batch", "duplicates", "transient_failure", "permanent_failure"];

#[tokio::test]
async fn the_reference_sink_passes_every_check_whichever_way_it_refuses_records() {
    for poison in [Poison::Refuse, Poison::DeadLetter, Poison::RefuseWithoutDestination] {
        let report = run("mem", &MemoryHarness::new(poison, Flaw::None)).await;
        assert_eq!(report.passed, ALL);
        assert!(report.skipped.is_empty(), "{report}");
    }
}

#[tokio::test]
async fn checks_the_harness_cannot_drive_are_skipped_with_why() {
    let harness = MemoryHarness {
        can_break: false,
        has_poison: false,
        ..MemoryHarness::new(Poison::Refuse, Flaw::None)
    };
    let report = run("mem", &harness).await;
    assert_eq!(report.passed, ALL[..4]);
    let skipped: Vec<&str> = report.skipped.iter().map(|(c, _)| *c).collect();
    assert_eq!(skipped, ["transient_failure", "permanent_failure"]);
    assert!(report.to_string().contains("skipped transient_failure: the harness cannot break its store"));
}

/// Runs the kit on a flawed sink in a task of its own and returns the panic message.
async fn failure(poison: Poison, flaw: Flaw) -> String {
    let harness = MemoryHarness::new(poison, flaw);
    let err = tokio::spawn(async move { run("flawed", &harness).await })
        .await
        .expect_err("the kit must reject this sink");
    let panic = err.into_panic();
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[tokio::test]
async fn every_flaw_is_caught_by_the_check_it_breaks() {
    for (flaw, poison, check, hint) in [
        (Flaw::NotIdempotent, Poison::Refuse, "duplicates", "replaying the same batch: expected inserted 0"),
        (Flaw::DuplicatesWithinBatch, Poison::Refuse, "duplicates", "same new record twice in one batch"),
        (Flaw::UncountedDuplicates, Poison::Refuse, "duplicates", "accounting for 100 records"),
        (Flaw::OkWhileBroken, Poison::Refuse, "transient_failure", "found Ok"),
        (Flaw::OutageIsPermanent, Poison::Refuse, "transient_failure", "found a permanent one"),
        (Flaw::NeverRecovers, Poison::Refuse, "transient_failure", "still failed 30 attempts"),
        (Flaw::PoisonIsTransient, Poison::Refuse, "permanent_failure", "found a transient error"),
        (Flaw::PartialWrites, Poison::Refuse, "permanent_failure", "all or nothing"),
    ] {
        let message = failure(poison, flaw).await;
        assert!(
            message.contains(&format!("check `{check}` failed")) && message.contains(hint),
            "expected check `{check}` to fail with {hint:?}, got: {message}"
        );
    }
}

#[tokio::test]
#[should_panic(expected = "check `duplicates` failed")]
async fn a_sink_that_is_not_idempotent_fails() {
    run("flawed", &MemoryHarness::new(Poison::Refuse, Flaw::NotIdempotent)).await;
}

#[test]
fn events_are_valid_json_of_about_500_bytes_with_a_distinct_id_per_coordinates() {
    let mut ids = HashSet::new();
    for (topic, partition, offset) in
        [("a", 0, 0), ("a", 0, 1), ("a", 1, 0), ("b", 0, 0), ("a.b-c", 3, 1 << 40)]
    {
        let r = event(topic, partition, offset);
        assert_eq!((&*r.topic, r.partition, r.offset), (topic, partition, offset));
        let bytes = r.payload.expect("payload");
        assert!((490..=520).contains(&bytes.len()), "{} bytes", bytes.len());
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        for field in ["event_id", "tracking_id", "status", "event_time"] {
            assert!(v[field].is_string(), "{field} missing in {v}");
        }
        let t = v["event_time"].as_str().expect("event_time");
        time::OffsetDateTime::parse(t, &Rfc3339).expect("RFC 3339");
        assert!(ids.insert(v["event_id"].as_str().expect("id").to_owned()));
    }
    assert_eq!(event("a", 0, 7), event("a", 0, 7), "the same coordinates give the same event");
}
