//! Against a real three-node Redis Cluster of the test's own (`redis-server --cluster-enabled`,
//! created with `redis-cli --cluster create`): append, fetch, remove, restore and orphan claims
//! of 5,000 records, with the default keys (spread over every node) and with `hash_tag` (all
//! on one node); keys of both forms restored together; an undecodable value quarantined within
//! its slot; the fence of an adopted instance; a primary killed in the middle of an append,
//! whose partial writes are cleaned up; and an append cut short by the process's death, which
//! the next start does not restore.

use std::time::{Duration, Instant};

use dp_buffer_redis::test_support::RedisCluster;
use dp_buffer_redis::{RedisBuffer, RedisBufferConfig, RedisMode};
use dp_core::{Buffer, BufferKey, Leases, ReadBack, Record, SecretUrl};
use fred::prelude::*;

const RECORDS: usize = 5_000;

fn config(cluster: &RedisCluster, prefix: &str, hash_tag: bool) -> RedisBufferConfig {
    RedisBufferConfig {
        url: SecretUrl::new(cluster.url()),
        mode: RedisMode::Cluster,
        nodes: cluster.other_seeds(),
        key_prefix: prefix.into(),
        hash_tag,
        command_timeout: Duration::from_secs(2),
        lease_ttl: Duration::from_secs(10),
        ..Default::default()
    }
}

/// Records of four partitions, interleaved, offsets rising per partition.
fn records(from: usize, count: usize) -> Vec<Record> {
    (from..from + count)
        .map(|i| {
            let payload = format!(r#"{{"event_id":"e-{i}","status":"IN_TRANSIT"}}"#);
            Record::new("deliveries", (i % 4) as i32, (i / 4) as i64, Some(payload.into_bytes()))
        })
        .collect()
}

/// Appends in chunks of 1,000, as the pipeline does.
async fn append(buffer: &RedisBuffer, records: &[Record]) -> Vec<BufferKey> {
    let mut keys = Vec::new();
    for chunk in records.chunks(1_000) {
        keys.extend(buffer.append(chunk).await.expect("append"));
    }
    keys
}

fn payloads(records: impl IntoIterator<Item = Record>) -> Vec<Vec<u8>> {
    records.into_iter().map(|r| r.payload.unwrap_or_default()).collect()
}

async fn exercise(hash_tag: bool) {
    let started = Instant::now();
    let cluster = RedisCluster::start(3);
    let prefix = if hash_tag { "ct" } else { "cp" };
    let cfg = config(&cluster, prefix, hash_tag);
    cfg.validate().expect("valid cluster configuration");
    let a = RedisBuffer::connect(&cfg, "a").await.expect("connect to the cluster");
    let written = records(0, RECORDS);
    let keys = append(&a, &written).await;
    assert_eq!(keys.len(), RECORDS);
    let form = if hash_tag { format!("{prefix}:buffer:{{a}}:") } else { format!("{prefix}:buffer:a:") };
    assert!(keys.iter().all(|k| k.0.starts_with(&form)), "keys of the form {form}…");

    let per_node: Vec<usize> =
        cluster.nodes().iter().map(|n| n.count_keys(&format!("{prefix}:buffer:*"))).collect();
    assert_eq!(per_node.iter().sum::<usize>(), RECORDS, "{per_node:?}");
    if hash_tag {
        assert_eq!(
            per_node.iter().filter(|&&n| n == RECORDS).count(),
            1,
            "one node holds them all: {per_node:?}"
        );
    } else {
        assert!(per_node.iter().all(|&n| n > RECORDS / 5), "spread over every node: {per_node:?}");
    }
    let persistence = a.persistence().await.expect("CONFIG GET on every primary");
    assert!(persistence.is_durable() && persistence.appendfsync == "always", "{persistence:?}");

    // Read back by key (a spilled batch), in order.
    let fetched: Vec<Record> =
        a.fetch(&keys).await.expect("fetch").into_iter().map(|r| r.expect("present")).collect();
    assert_eq!(payloads(fetched), payloads(written.clone()));
    assert_eq!(a.count_keys().await.expect("count"), RECORDS);

    // A delivered batch is deleted.
    a.remove(&keys[..1_000]).await.expect("remove");
    assert_eq!(a.count_keys().await.expect("count"), RECORDS - 1_000);

    // A value that does not decode is moved aside, within its slot.
    let bad = format!("{form}ffffffffffffffffffffffffffffffff");
    a.client().set::<(), _, _>(&bad, "not a record", None, None, false).await.expect("SET");
    let quarantined = if hash_tag {
        format!("{prefix}:quarantine:{{a}}:ffffffffffffffffffffffffffffffff")
    } else {
        format!("{prefix}:quarantine:{{{bad}}}")
    };

    // A restart with the other key form: the restore finds both, in arrival order.
    a.close().await.expect("close");
    let switched = RedisBuffer::connect(&config(&cluster, prefix, !hash_tag), "a").await.expect("reconnect");
    let later = records(RECORDS, 500);
    append(&switched, &later).await;
    let restored = switched.restore().await.expect("restore");
    let expected: Vec<Record> = written[1_000..].iter().chain(&later).cloned().collect();
    assert_eq!(restored.len(), expected.len());
    assert_eq!(payloads(restored.into_iter().map(|(_, r)| r)), payloads(expected.clone()), "arrival order");
    assert_eq!(switched.client().exists::<i64, _>(&quarantined).await.expect("EXISTS"), 1, "{quarantined}");
    switched.client().del::<(), _>(&quarantined).await.expect("DEL");

    // The instance dies (its lease is gone): one other instance claims it and gets everything.
    let b = RedisBuffer::connect(&cfg, "b").await.expect("connect b");
    let c = RedisBuffer::connect(&cfg, "c").await.expect("connect c");
    let lease = format!("{prefix}:lease:{{a}}");
    assert_eq!(b.client().exists::<i64, _>(&lease).await.expect("EXISTS"), 1, "lease key {lease}");
    b.client().del::<(), _>(&lease).await.expect("lease expired");
    let orphan = b.claim_orphan().await.expect("claim").expect("b wins the claim");
    assert_eq!(orphan.instance, "a");
    assert_eq!(payloads(orphan.records.iter().map(|(_, r)| r.clone())), payloads(expected));
    assert!(c.claim_orphan().await.expect("claim").is_none(), "one winner");

    // The adopted instance, still alive, sees the claim at its next renewal and writes nothing.
    switched.heartbeat().await.expect("renewal");
    assert!(switched.append(&records(0, 10)).await.is_err(), "a claimed buffer takes no writes");
    assert!(switched.healthcheck().await.is_err(), "a claimed buffer is not healthy");
    assert_eq!(switched.count_keys().await.expect("count"), orphan.records.len());

    let orphan_keys: Vec<BufferKey> = orphan.records.iter().map(|(k, _)| k.clone()).collect();
    b.remove(&orphan_keys).await.expect("remove the orphan's records");
    b.release_orphan("a").await.expect("release");
    let registered: Vec<String> = b.client().smembers(format!("{prefix}:instances")).await.expect("SMEMBERS");
    assert!(!registered.contains(&"a".to_owned()), "{registered:?}");
    assert_eq!(cluster.count_keys(&format!("{prefix}:buffer:*")), 0, "nothing left on any node");
    assert_eq!(cluster.count_keys(&format!("{prefix}:claim:*")), 0);
    for buffer in [b, c] {
        buffer.close().await.expect("close");
    }
    eprintln!("hash_tag = {hash_tag}: keys per node {per_node:?}, {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_keys_spread_over_every_node_and_every_operation_works() {
    exercise(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_tagged_keys_stay_on_one_node_and_every_operation_works() {
    exercise(true).await;
}

/// A primary dies while a spread append is in flight: the append fails, the keys it wrote on
/// the other nodes are deleted (at once, or by the health check once the cluster answers), so
/// no record sits in Redis after one that is held in memory only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_append_cut_short_by_a_dead_primary_or_a_dead_process_leaves_no_partial_chunk() {
    let mut cluster = RedisCluster::start(3);
    let cfg =
        RedisBufferConfig { command_timeout: Duration::from_millis(1_000), ..config(&cluster, "cf", false) };
    let buffer = RedisBuffer::connect(&cfg, "a").await.expect("connect");
    let kept = append(&buffer, &records(0, 1_000)).await;

    cluster.node_mut(2).kill();
    let failed = buffer.append(&records(1_000, 1_000)).await;
    assert!(failed.is_err(), "an append touching a dead primary fails");
    assert!(buffer.healthcheck().await.is_err(), "unhealthy while a primary is down");

    cluster.node_mut(2).restart();
    cluster.wait_until_ok(Duration::from_secs(30));
    let start = Instant::now();
    while let Err(e) = buffer.healthcheck().await {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still unhealthy after the primary came back: {e}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The restarted primary reloaded its AOF; the failed chunk left nothing anywhere.
    assert_eq!(buffer.count_keys().await.expect("count"), 1_000);
    let restored = buffer.restore().await.expect("restore");
    assert_eq!(
        restored.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        kept,
        "exactly the appended chunk, in order"
    );
    append(&buffer, &records(2_000, 1_000)).await;
    assert_eq!(buffer.count_keys().await.expect("count"), 2_000, "appends resume");
    let pending = "cf:pending:{a}";
    assert_eq!(buffer.client().exists::<i64, _>(pending).await.expect("EXISTS"), 0, "no append in flight");

    // The process dies in the middle of an append: its pending record names the chunk, of
    // which some keys were written — valid records, which a restore would otherwise deliver.
    // The next start deletes them rather than restoring part of a chunk whose records were
    // never acknowledged.
    let cut: Vec<String> =
        (0..30).map(|i| format!("cf:buffer:a:ffffffffffffffffffffffffffff{i:04}")).collect();
    for (key, record) in cut[..20].iter().zip(records(9_000, 20)) {
        let value = dp_core::encode_record(&record);
        buffer.client().set::<(), _, _>(key, value.as_slice(), None, None, false).await.expect("SET");
    }
    buffer.client().set::<(), _, _>(pending, cut.join("\n"), None, None, false).await.expect("SET pending");
    drop(buffer);
    let restarted = RedisBuffer::connect(&cfg, "a").await.expect("reconnect");
    let restored = restarted.restore().await.expect("restore");
    assert_eq!(restored.len(), 2_000, "the cut-short chunk is not restored");
    assert_eq!(restarted.count_keys().await.expect("count"), 2_000, "and its keys are gone");
    assert_eq!(restarted.client().exists::<i64, _>(pending).await.expect("EXISTS"), 0);
}

#[test]
fn cluster_settings_are_validated_naming_the_key() {
    let base = RedisBufferConfig { mode: RedisMode::Cluster, ..Default::default() };
    base.validate().expect("the default URL is a seed");
    let e = RedisBufferConfig { url: SecretUrl::new("redis://h:7000/2"), ..base.clone() }
        .validate()
        .expect_err("database");
    assert!(e.starts_with("redis.url: a Redis Cluster has only database 0"), "{e}");
    let e = RedisBufferConfig { nodes: vec!["h".into()], ..base.clone() }.validate().expect_err("no port");
    assert!(e.starts_with("redis.nodes[0]"), "{e}");
    let e = RedisBufferConfig { sentinel_service: Some("m".into()), ..base.clone() }
        .validate()
        .expect_err("sentinel only");
    assert!(e.starts_with("redis.sentinel_service"), "{e}");
    let e = RedisBufferConfig { lease_ttl: Duration::from_secs(10), ..base.clone() }
        .validate()
        .expect_err("lease margin");
    assert!(e.starts_with("redis.command_timeout"), "{e}");
    RedisBufferConfig { lease_ttl: Duration::from_secs(10), hash_tag: true, ..base }
        .validate()
        .expect("hash-tagged appends are fenced by the script");
}
