//! Against a real primary behind two real Sentinels of the test's own (`redis-server
//! --sentinel`), without a failover: the buffer finds the primary through the Sentinels (the
//! first address listed answers nothing), and append, fetch, remove, restore and orphan claims
//! work on it.

use std::time::Duration;

use dp_buffer_redis::test_support::RedisSentinels;
use dp_buffer_redis::{RedisBuffer, RedisBufferConfig, RedisMode};
use dp_core::{Buffer, BufferKey, Leases, ReadBack, Record, SecretUrl};
use fred::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffer_finds_the_primary_through_sentinels_and_works_on_it() {
    let sentinels = RedisSentinels::start(2);
    let nobody =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let mut nodes = vec![sentinels.sentinels()[0].address()];
    nodes.extend(sentinels.other_sentinels());
    let cfg = RedisBufferConfig {
        // A Sentinel that is down comes first: the next one is asked.
        url: SecretUrl::new(format!("redis://127.0.0.1:{nobody}")),
        mode: RedisMode::Sentinel,
        nodes,
        sentinel_service: Some(RedisSentinels::SERVICE.into()),
        key_prefix: "st".into(),
        lease_ttl: Duration::from_secs(10),
        ..Default::default()
    };
    cfg.validate().expect("valid sentinel configuration");
    let a = RedisBuffer::connect(&cfg, "a").await.expect("connect through the sentinels");
    let records: Vec<Record> = (0..2_000)
        .map(|i| Record::new("t", (i % 3) as i32, i / 3, Some(format!("{{\"n\":{i}}}").into_bytes())))
        .collect();
    let mut keys: Vec<BufferKey> = Vec::new();
    for chunk in records.chunks(500) {
        keys.extend(a.append(chunk).await.expect("append"));
    }
    assert_eq!(sentinels.primary().count_keys("st:buffer:a:*"), 2_000, "written to the primary");
    let persistence = a.persistence().await.expect("CONFIG GET");
    assert!(persistence.is_durable(), "{persistence:?}");
    let fetched: Vec<Record> = a.fetch(&keys).await.expect("fetch").into_iter().flatten().collect();
    assert_eq!(fetched, records);
    a.remove(&keys[..500]).await.expect("remove");
    a.close().await.expect("close");

    let again = RedisBuffer::connect(&cfg, "a").await.expect("reconnect");
    let restored: Vec<Record> = again.restore().await.expect("restore").into_iter().map(|(_, r)| r).collect();
    assert_eq!(restored, records[500..]);

    let b = RedisBuffer::connect(&cfg, "b").await.expect("connect b");
    b.client().del::<(), _>("st:lease:a").await.expect("lease expired");
    let orphan = b.claim_orphan().await.expect("claim").expect("b claims a");
    assert_eq!(orphan.records.len(), 1_500);
    let orphan_keys: Vec<BufferKey> = orphan.records.into_iter().map(|(k, _)| k).collect();
    b.remove(&orphan_keys).await.expect("remove");
    b.release_orphan("a").await.expect("release");
    assert_eq!(sentinels.primary().count_keys("st:buffer:*"), 0);
    b.close().await.expect("close");
}

#[test]
fn sentinel_settings_are_validated_naming_the_key() {
    let base = RedisBufferConfig { mode: RedisMode::Sentinel, ..Default::default() };
    let e = base.validate().expect_err("service name required");
    assert!(e.starts_with("redis.sentinel_service: required"), "{e}");
    RedisBufferConfig { sentinel_service: Some("mymaster".into()), ..base.clone() }
        .validate()
        .expect("a sentinel configuration");
    let e =
        RedisBufferConfig { url: SecretUrl::new("redis-sentinel://h:26379?sentinelServiceName=m"), ..base }
            .validate()
            .expect_err("fred-style URL");
    assert!(e.starts_with("redis.url: `redis-sentinel://` URLs are not used here"), "{e}");
    let e = RedisBufferConfig { nodes: vec!["h:1".into()], ..Default::default() }
        .validate()
        .expect_err("standalone");
    assert!(e.starts_with("redis.nodes: only used with"), "{e}");
}
