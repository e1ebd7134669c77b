//! Against the real Redis on 127.0.0.1:6379: an instance whose buffer is being adopted writes
//! nothing more to it, and reports itself unhealthy until the claim ends.

use std::time::Duration;

use dp_buffer_redis::{RedisBuffer, RedisBufferConfig};
use dp_core::{Buffer, Leases, Record};
use fred::prelude::*;

fn rec(offset: i64) -> Record {
    Record::new("t", 0, offset, Some(b"{}".to_vec()))
}

#[tokio::test]
async fn appends_are_refused_while_another_instance_holds_a_claim() {
    let prefix = format!("fence{}", std::process::id());
    let config = RedisBufferConfig {
        key_prefix: prefix.clone(),
        lease_ttl: Duration::from_secs(2),
        ..Default::default()
    };
    let buffer = RedisBuffer::connect(&config, "me")
        .await
        .unwrap_or_else(|e| panic!("Redis must answer on 127.0.0.1:6379: {e}"));
    let keys = buffer.append(&[rec(0), rec(1)]).await.expect("unclaimed: appended");
    // Past the unclaimed window (3/4 of the 2 s lease) appends take the fenced path.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(buffer.append(&[rec(9)]).await.expect("fenced path, no claim").len(), 1);
    assert_eq!(keys.len(), 2);
    buffer.healthcheck().await.expect("healthy");

    let client: &Client = buffer.client();
    let claim = format!("{prefix}:claim:me");
    client.set::<(), _, _>(&claim, "other", None, None, false).await.expect("claim");
    // A claim can only appear once the lease is gone; the next renewal sees it.
    client.del::<(), _>(format!("{prefix}:lease:me")).await.expect("lease expired");
    buffer.heartbeat().await.expect("renewal");
    assert!(buffer.append(&[rec(2)]).await.is_err(), "a claimed buffer takes no writes");
    assert!(buffer.healthcheck().await.is_err(), "a claimed buffer is not healthy");
    assert_eq!(buffer.count_keys().await.expect("count"), 3, "nothing was added under the claim");

    client.del::<(), _>(&claim).await.expect("release");
    assert_eq!(buffer.append(&[rec(3)]).await.expect("released: appended by the fenced path").len(), 1);
    buffer.heartbeat().await.expect("renewal");
    assert_eq!(buffer.append(&[rec(4)]).await.expect("unclaimed again: plain MSET").len(), 1);
    buffer.remove(&keys).await.expect("remove");
    let _: () =
        client.del(vec![format!("{prefix}:instances"), format!("{prefix}:lease:me")]).await.expect("cleanup");
    let left = buffer.count_keys().await.expect("count");
    assert_eq!(left, 3);
    let all = buffer.restore().await.expect("restore");
    buffer.remove(&all.into_iter().map(|(k, _)| k).collect::<Vec<_>>()).await.expect("cleanup");
}
