//! The sink conformance kit run against the PostgreSQL sink, with real connection failures: the
//! sink talks to PostgreSQL through a TCP proxy that the kit cuts and restores.

mod common;

use std::sync::Arc;

use common::{PG_ADDR, PG_URL, drop_tables, pg, require, unique};
use dp_core::{Record, Sink};
use dp_sink_conformance::{Harness, Proxy, anyhow, async_trait, run};
use example_postgres_sink::PostgresSink;

struct PostgresHarness {
    sink: Arc<PostgresSink>,
    proxy: Proxy,
    /// A direct connection, not through the proxy, to read the store back.
    reader: tokio_postgres::Client,
    table: String,
}

impl PostgresHarness {
    async fn coordinates(&self, table: &str) -> anyhow::Result<Vec<(String, i32, i64)>> {
        let rows = self
            .reader
            .query(&format!(r#"SELECT kafka_topic, kafka_partition, kafka_offset FROM "{table}""#), &[])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }
}

#[async_trait]
impl Harness for PostgresHarness {
    fn sink(&self) -> Arc<dyn Sink> {
        Arc::clone(&self.sink) as Arc<dyn Sink>
    }

    async fn stored(&self) -> anyhow::Result<Vec<(String, i32, i64)>> {
        self.coordinates(&self.table).await
    }

    async fn break_store(&self) -> bool {
        self.proxy.cut();
        true
    }

    async fn heal_store(&self) {
        self.proxy.restore();
    }

    fn poison(&self, topic: &str, partition: i32, offset: i64) -> Option<Record> {
        Some(Record::new(topic, partition, offset, Some(b"{\"event_id\": not json".to_vec())))
    }

    async fn dead_lettered(&self) -> anyhow::Result<Vec<(String, i32, i64)>> {
        self.coordinates(&format!("{}_dead_letter", self.table)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_sink_passes_the_conformance_kit() {
    require(&["postgres"]);
    let table = unique("pg_conformance");
    let proxy = Proxy::start(PG_ADDR).await.expect("start proxy");
    let url = PG_URL.replace("127.0.0.1:5432", &proxy.address());
    let sink = PostgresSink::connect(&url, &table).await.expect("connect through the proxy");
    let harness = PostgresHarness { sink: Arc::new(sink), proxy, reader: pg().await, table: table.clone() };

    let report = run(&table, &harness).await;
    println!("{report}");
    assert!(report.skipped.is_empty(), "every check must run: {report}");
    for check in ["empty_batch", "large_batch", "duplicates", "transient_failure", "permanent_failure"] {
        assert!(report.passed.contains(&check), "`{check}` must have run and passed: {report}");
    }
    drop_tables(&table).await;
}
