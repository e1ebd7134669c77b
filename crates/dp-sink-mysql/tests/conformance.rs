//! The MySQL sink through the sink conformance kit, against the real MariaDB and MySQL
//! (`servers`), reached through a proxy the test can cut (a transient outage). Once plain and
//! once keeping offset watermarks for a consumer group; each run has tables of its own.

mod servers;

use std::sync::Arc;

use dp_core::{Record, SecretUrl, Sink};
use dp_sink_conformance::{Harness, Proxy, anyhow, async_trait, run};
use dp_sink_mysql::{MysqlSink, MysqlSinkConfig};
use mysql_async::prelude::Queryable;
use servers::{Server, on_both_servers};

on_both_servers!(mysql_sink_meets_the_sink_contract, mysql_sink_with_watermarks_meets_the_sink_contract);

struct MysqlHarness {
    sink: Arc<MysqlSink>,
    /// The sink's only way to the server.
    proxy: Proxy,
    /// Straight to the server, for reading the tables back and cleaning up.
    direct: mysql_async::Pool,
    table: String,
    group: Option<String>,
}

impl MysqlHarness {
    /// Fresh tables named after `tag`, and with `group` the sink in watermark mode.
    async fn new(server: &Server, tag: &str, group: Option<String>) -> Self {
        let unique = uuid::Uuid::now_v7().as_simple().to_string();
        let table = format!("conf_{tag}_{}_{}", std::process::id(), &unique[20..]);
        let direct = server.pool().await;
        let mut conn = direct.get_conn().await.expect("connection");
        conn.query_drop(format!("DROP TABLE IF EXISTS `{table}`, `{table}_dead_letter`"))
            .await
            .expect("drop");
        drop(conn);
        let proxy = Proxy::start(&server.address()).await.expect("start the proxy");
        let config = MysqlSinkConfig {
            url: SecretUrl::new(format!("mysql://root@{}/test", proxy.address())),
            table: table.clone(),
            dead_letter_table: None,
            create_table: true,
            ..MysqlSinkConfig::default()
        };
        let mut sink = MysqlSink::connect(&config).await.expect("connect the sink through the proxy");
        if let Some(g) = &group {
            sink = sink.with_consumer_group(g);
        }
        Self { sink: Arc::new(sink), proxy, direct, table, group }
    }

    async fn coordinates(&self, table: &str) -> anyhow::Result<Vec<(String, i32, i64)>> {
        let mut conn = self.direct.get_conn().await?;
        Ok(conn.query(format!("SELECT kafka_topic, kafka_partition, kafka_offset FROM `{table}`")).await?)
    }

    /// Drops the tables and the group's watermarks; only after a passing run, so a failure
    /// leaves them to look at.
    async fn clean_up(self) {
        let _ = self.sink.close().await;
        let mut conn = self.direct.get_conn().await.expect("connection");
        conn.query_drop(format!("DROP TABLE IF EXISTS `{0}`, `{0}_dead_letter`", self.table))
            .await
            .expect("drop tables");
        if let Some(g) = &self.group {
            conn.exec_drop("DELETE FROM pipeline_offsets WHERE consumer_group = ?", (g,))
                .await
                .expect("delete watermarks");
        }
        drop(conn);
        let _ = self.direct.disconnect().await;
    }
}

#[async_trait]
impl Harness for MysqlHarness {
    fn sink(&self) -> Arc<dyn Sink> {
        self.sink.clone()
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

    /// Not JSON: the sink dead-letters it itself, in the batch's transaction.
    fn poison(&self, topic: &str, partition: i32, offset: i64) -> Option<Record> {
        Some(Record::new(topic, partition, offset, Some(b"{not json".to_vec())))
    }

    async fn dead_lettered(&self) -> anyhow::Result<Vec<(String, i32, i64)>> {
        self.coordinates(&format!("{}_dead_letter", self.table)).await
    }
}

async fn mysql_sink_meets_the_sink_contract(server: &Server) {
    let harness = MysqlHarness::new(server, "plain", None).await;
    let report = run("mysql", &harness).await;
    println!("{report}");
    assert!(report.skipped.is_empty(), "{report}");
    harness.clean_up().await;
}

async fn mysql_sink_with_watermarks_meets_the_sink_contract(server: &Server) {
    let group = format!("conformance-{}-{}", std::process::id(), uuid::Uuid::now_v7().as_simple());
    let harness = MysqlHarness::new(server, "wm", Some(group)).await;
    let report = run("mysql-watermarks", &harness).await;
    println!("{report}");
    assert!(report.skipped.is_empty(), "{report}");
    harness.clean_up().await;
}
