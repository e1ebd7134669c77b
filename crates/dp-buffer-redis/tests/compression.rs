//! Against the real Redis on 127.0.0.1:6379: with `compression = "zstd"` buffered records are
//! stored compressed, smaller than plain ones, and read back (fetch, restore) unchanged, also
//! by an instance configured without compression — so the setting can change across restarts.

use dp_buffer_redis::{Compression, RedisBuffer, RedisBufferConfig};
use dp_core::{Buffer, FORMAT_VERSION, FORMAT_VERSION_ZSTD, ReadBack, Record};
use fred::prelude::*;

fn event(offset: i64) -> Record {
    let payload = format!(
        r#"{{"event_id":"e-{offset}","tracking_id":"TRK{offset:09}","status":"IN_TRANSIT","carrier":"UPS","location":{{"facility":"HUB-ROT-09","city":"Rotterdam","country":"NL"}},"note":"parcel scanned at the sorting centre"}}"#
    );
    Record::new("deliveries", 0, offset, Some(payload.into_bytes()))
}

async fn stored(client: &Client, key: &str) -> Vec<u8> {
    client.get::<Vec<u8>, _>(key).await.expect("GET")
}

#[tokio::test]
async fn zstd_records_are_smaller_and_read_back_whatever_the_setting() {
    let prefix = format!("zstd{}", std::process::id());
    let plain_config = RedisBufferConfig { key_prefix: prefix.clone(), ..Default::default() };
    let zstd_config = RedisBufferConfig { compression: Compression::Zstd, ..plain_config.clone() };
    let records: Vec<Record> = (0..10).map(event).collect();

    let packed = RedisBuffer::connect(&zstd_config, "a")
        .await
        .unwrap_or_else(|e| panic!("Redis must answer on 127.0.0.1:6379: {e}"));
    let packed_keys = packed.append(&records).await.expect("append");
    let plain = RedisBuffer::connect(&plain_config, "b").await.expect("connect");
    let plain_keys = plain.append(&records).await.expect("append");

    let zstd_value = stored(packed.client(), &packed_keys[0].0).await;
    let plain_value = stored(plain.client(), &plain_keys[0].0).await;
    assert_eq!(zstd_value[0], FORMAT_VERSION_ZSTD);
    assert_eq!(plain_value[0], FORMAT_VERSION);
    assert!(zstd_value.len() < plain_value.len(), "{} vs {} bytes", zstd_value.len(), plain_value.len());

    let fetched: Vec<Record> =
        packed.fetch(&packed_keys).await.expect("fetch").into_iter().flatten().collect();
    assert_eq!(fetched, records);
    // A restart without compression restores what was written compressed.
    packed.close().await.expect("close");
    let reopened = RedisBuffer::connect(&plain_config, "a").await.expect("connect");
    let restored: Vec<Record> =
        reopened.restore().await.expect("restore").into_iter().map(|(_, r)| r).collect();
    assert_eq!(restored, records);

    reopened.remove(&packed_keys).await.expect("remove");
    plain.remove(&plain_keys).await.expect("remove");
    for b in [reopened, plain] {
        b.close().await.expect("close");
    }
}
