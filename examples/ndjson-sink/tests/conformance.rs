//! `NdjsonSink` through the sink conformance kit, on a file in a temporary directory.

use std::path::PathBuf;
use std::sync::Arc;

use dp_core::Sink;
use dp_sink_conformance::{Harness, async_trait, run};
use example_ndjson_sink::{NdjsonSink, read_lines};

/// The sink writes `<tmp>/data/out.ndjson`. Breaking the store moves `data` away, so opening
/// the file fails (whoever runs the test, root included); healing moves it back.
struct NdjsonHarness {
    sink: Arc<NdjsonSink>,
    dir: PathBuf,
    away: PathBuf,
    _tmp: tempfile::TempDir,
}

impl NdjsonHarness {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).expect("data directory");
        let sink = NdjsonSink::open(&dir.join("out.ndjson")).expect("open the sink");
        Self { sink: Arc::new(sink), away: tmp.path().join("data.away"), dir, _tmp: tmp }
    }
}

#[async_trait]
impl Harness for NdjsonHarness {
    fn sink(&self) -> Arc<dyn Sink> {
        self.sink.clone()
    }

    async fn stored(&self) -> anyhow::Result<Vec<(String, i32, i64)>> {
        let path = self.sink.path();
        if !path.exists() {
            return Ok(Vec::new());
        }
        read_lines(path)
    }

    async fn break_store(&self) -> bool {
        std::fs::rename(&self.dir, &self.away).expect("move the data directory away");
        true
    }

    async fn heal_store(&self) {
        std::fs::rename(&self.away, &self.dir).expect("move the data directory back");
    }
}

#[tokio::test]
async fn ndjson_sink_meets_the_sink_contract() {
    let report = run("ndjson", &NdjsonHarness::new()).await;
    println!("{report}");
    // The sink takes any payload, so only the permanent-failure check can be skipped.
    assert_eq!(report.skipped.iter().map(|(c, _)| *c).collect::<Vec<_>>(), ["permanent_failure"]);
}
