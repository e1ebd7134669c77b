//! Shared by the integration tests: the services (PostgreSQL, and for the end-to-end test Kafka
//! and Redis) and private names, so tests never collide.

#![allow(dead_code)]

use std::net::TcpStream;
use std::time::Duration;

pub const PG_ADDR: &str = "127.0.0.1:5432";
pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const KAFKA: &str = "127.0.0.1:9092";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Fails loudly, naming the fix, when a service is not answering: never a silent skip.
pub fn require(services: &[&str]) {
    for name in services {
        let (addr, fix) = match *name {
            "postgres" => {
                (PG_ADDR, "start PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres, database test)")
            }
            "kafka" => (KAFKA, "run `scripts/kafka.sh start`"),
            "redis" => ("127.0.0.1:6379", "start redis-server on 127.0.0.1:6379"),
            other => panic!("unknown service {other}"),
        };
        let sock = addr.parse().expect("static address");
        if TcpStream::connect_timeout(&sock, Duration::from_secs(2)).is_err() {
            panic!("{name} is not answering on {addr}: {fix}");
        }
    }
}

/// `<prefix>_<pid>_<random>`, lowercase: a table name, or the base of topic and group names.
pub fn unique(prefix: &str) -> String {
    let random = uuid::Uuid::now_v7().as_simple().to_string();
    format!("{prefix}_{}_{}", std::process::id(), &random[20..])
}

/// A direct connection to PostgreSQL (not through any proxy), to read the store back.
pub async fn pg() -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(PG_URL, tokio_postgres::NoTls).await.expect("connect to postgres");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// One `bigint` from `sql`.
pub async fn scalar(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e:?}")).get(0)
}

pub async fn drop_tables(table: &str) {
    pg().await
        .batch_execute(&format!(r#"DROP TABLE IF EXISTS "{table}", "{table}_dead_letter""#))
        .await
        .expect("drop tables");
}
