//! The Redis ACL `docs/security.md` recommends is enough, and no more than that: against a
//! redis-server of the test's own (never the shared one), a user limited to the key prefix and
//! the listed commands appends, reads back, restores, renews its lease, claims an orphan,
//! checks persistence and removes — and cannot read keys outside its prefix.

use std::time::Duration;

use dp_buffer_redis::test_support::RedisServer;
use dp_buffer_redis::{RedisBuffer, RedisBufferConfig};
use dp_core::{Buffer, Leases, ReadBack, Record, SecretUrl};

/// The ACL rule of docs/security.md, for the prefix `msg`.
const DOCUMENTED_RULE: &str = "on >acl-test-pw resetkeys ~msg:* resetchannels -@all \
    +mset +mget +unlink +del +get +set +exists +rename +scan +smembers +sadd +srem \
    +eval +evalsha +ping +config|get +info +hello +auth +client|setname +cluster|slots +cluster|shards";

fn rec(offset: i64) -> Record {
    Record::new("t", 0, offset, Some(format!(r#"{{"n":{offset}}}"#).into_bytes()))
}

#[tokio::test]
async fn the_documented_acl_runs_every_buffer_operation() {
    let redis = RedisServer::start();
    let redis = redis.node();
    let mut acl = vec!["ACL", "SETUSER", "delivery-pipeline"];
    acl.extend(DOCUMENTED_RULE.split_whitespace());
    assert_eq!(redis.cli(&acl).trim(), "OK");
    assert_eq!(redis.cli(&["SET", "other:secret", "x"]).trim(), "OK");

    let config = RedisBufferConfig {
        url: SecretUrl::new(format!("redis://delivery-pipeline:acl-test-pw@127.0.0.1:{}", redis.port())),
        lease_ttl: Duration::from_secs(1),
        ..Default::default()
    };
    let me = RedisBuffer::connect(&config, "me").await.expect("connect as the limited user");
    let keys = me.append(&[rec(0), rec(1), rec(2)]).await.expect("append");
    assert_eq!(me.fetch(&keys[..1]).await.expect("fetch")[0].as_ref().map(|r| r.offset), Some(0));
    me.heartbeat().await.expect("lease renewal");
    me.remove(&keys[..1]).await.expect("remove");
    assert_eq!(me.restore().await.expect("restore").len(), 2);
    me.persistence().await.expect("CONFIG GET for after_buffer's check");
    me.healthcheck().await.expect("healthcheck");

    // Another instance adopts `me` once its lease expires.
    let other = RedisBuffer::connect(&config, "other").await.expect("connect");
    other.heartbeat().await.expect("lease");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let orphan = other.claim_orphan().await.expect("claim").expect("me is orphaned");
    assert_eq!((orphan.instance.as_str(), orphan.records.len()), ("me", 2));
    other.remove(&orphan.records.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()).await.expect("remove");
    other.release_orphan("me").await.expect("release");
    other.close().await.expect("close");

    // Nothing outside the prefix.
    let denied: Result<Option<String>, _> = {
        use fred::prelude::*;
        me.client().get("other:secret").await
    };
    let denied = denied.expect_err("keys outside msg:* are off limits");
    assert!(denied.to_string().to_lowercase().contains("permission"), "{denied}");
}
