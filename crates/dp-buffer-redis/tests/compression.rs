//! Against the real Redis on 127.0.0.1:6379: with `compression = "zstd"` buffered records are
//! stored compressed, smaller than plain ones, and read back (fetch, restore) unchanged, also
//! by an instance configured without compression — so the setting can change across restarts.
//! With `compression = "zstd-dictionary"` a dictionary is trained on the first records, stored
//! in Redis before any record uses it, shared by every instance under the prefix, and fetched
//! by any reader that needs it.

use dp_buffer_redis::{Compression, RedisBuffer, RedisBufferConfig};
use dp_core::{Buffer, FORMAT_VERSION, FORMAT_VERSION_ZSTD, FORMAT_VERSION_ZSTD_DICT, ReadBack, Record};
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

/// Events of a few templates, as real ones are: ids, statuses and places vary.
fn varied(offset: i64) -> Record {
    let statuses = ["PICKED_UP", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED"];
    let cities = ["Rotterdam", "Lyon", "Leipzig", "Porto", "Gdansk"];
    let payload = format!(
        r#"{{"event_id":"evt-{offset:012}","tracking_id":"TRK{:09}","status":"{}","location":{{"city":"{}","lat":{}.{:04}}},"note":"scan {}"}}"#,
        offset * 7919 % 1_000_000_007,
        statuses[offset as usize % 4],
        cities[(offset as usize / 3) % 5],
        40 + offset % 20,
        offset * 37 % 10_000,
        offset * 31 % 997,
    );
    Record::new("deliveries", (offset % 4) as i32, offset, Some(payload.into_bytes()))
}

fn batch(from: i64, n: i64) -> Vec<Record> {
    (from..from + n).map(varied).collect()
}

async fn keys_matching(client: &Client, pattern: &str) -> Vec<String> {
    use futures::TryStreamExt as _;
    let mut keys: Vec<String> = client
        .scan_buffered(pattern, Some(1000), None)
        .try_collect::<Vec<fred::types::Key>>()
        .await
        .expect("SCAN")
        .iter()
        .map(|k| k.as_str_lossy().into_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_dictionary_is_trained_stored_once_and_read_back_by_any_reader() {
    let prefix = format!("zdict{}", std::process::id());
    let config = RedisBufferConfig {
        key_prefix: prefix.clone(),
        compression: Compression::ZstdDictionary,
        ..Default::default()
    };
    let a = RedisBuffer::connect(&config, "a")
        .await
        .unwrap_or_else(|e| panic!("Redis must answer on 127.0.0.1:6379: {e}"));
    assert_eq!(a.dictionary_id(), None, "no dictionary under a new prefix");

    // zstd alone until the training records are in.
    let mut keys = a.append(&batch(0, 1500)).await.expect("append");
    assert_eq!(a.dictionary_id(), None, "1500 records are not enough to train on");
    keys.extend(a.append(&batch(1500, 1000)).await.expect("append"));
    let id = a.dictionary_id().expect("trained once 2,000 records were written");
    assert_eq!(
        stored(a.client(), &keys[2499].0).await[0],
        FORMAT_VERSION_ZSTD,
        "written before the training"
    );

    // Stored before use, and published.
    let published: String = a.client().get(format!("{prefix}:dictionary")).await.expect("GET");
    assert_eq!(published, id.to_string());
    let bytes = stored(a.client(), &format!("{prefix}:dictionary:{id}")).await;
    assert!((1..=dp_buffer_redis::DICTIONARY_BYTES).contains(&bytes.len()), "{} bytes", bytes.len());

    let after = a.append(&batch(2500, 100)).await.expect("append");
    let (mut with, mut without) = (0, 0);
    for (i, key) in after.iter().enumerate() {
        let value = stored(a.client(), &key.0).await;
        assert_eq!(value[0], FORMAT_VERSION_ZSTD_DICT);
        assert_eq!(dp_core::dictionary_id(&value), Some(id));
        with += value.len();
        without += dp_core::encode_record_zstd(&varied(2500 + i as i64), 1).len();
    }
    assert!(with * 2 < without, "{with} bytes with the dictionary, {without} with zstd alone");
    keys.extend(after);

    // An instance starting under the prefix uses the published dictionary at once.
    let b = RedisBuffer::connect(&config, "b").await.expect("connect");
    assert_eq!(b.dictionary_id(), Some(id));
    let b_keys = b.append(&batch(9000, 1)).await.expect("append");
    assert_eq!(dp_core::dictionary_id(&stored(b.client(), &b_keys[0].0).await), Some(id));
    b.remove(&b_keys).await.expect("remove");
    b.close().await.expect("close");

    // A restart without compression (a process that never saw the dictionary) restores all.
    a.close().await.expect("close");
    let plain = RedisBufferConfig { compression: Compression::None, ..config.clone() };
    let reopened = RedisBuffer::connect(&plain, "a").await.expect("connect");
    let restored: Vec<Record> =
        reopened.restore().await.expect("restore").into_iter().map(|(_, r)| r).collect();
    assert_eq!(restored, batch(0, 2600));
    let fetched = reopened.fetch(&keys[2590..]).await.expect("fetch");
    assert_eq!(fetched.into_iter().flatten().collect::<Vec<_>>(), batch(2590, 10));
    reopened.close().await.expect("close");

    // Without the dictionary its records cannot be read: they are quarantined, not dropped.
    plain_del(&reopened_client(&plain).await, &format!("{prefix}:dictionary:{id}")).await;
    let blind = RedisBuffer::connect(&plain, "a").await.expect("connect");
    let restored = blind.restore().await.expect("restore");
    assert_eq!(restored.len(), 2500, "the records written before the dictionary");
    let quarantined = keys_matching(blind.client(), &format!("{prefix}:quarantine:*")).await;
    assert_eq!(quarantined.len(), 100, "the records that need the missing dictionary");

    let mut leftovers = keys_matching(blind.client(), &format!("{prefix}:*")).await;
    leftovers.retain(|k| !k.contains(":lease:") && !k.ends_with(":instances"));
    let names: Vec<&str> = leftovers.iter().map(String::as_str).collect();
    let _: () = blind.client().del(names).await.expect("DEL");
    blind.close().await.expect("close");
}

async fn reopened_client(config: &RedisBufferConfig) -> Client {
    let client = Client::new(Config::from_url(config.url.expose()).expect("url"), None, None, None);
    client.init().await.expect("connect");
    client
}

async fn plain_del(client: &Client, key: &str) {
    let _: () = client.del(key).await.expect("DEL");
    client.quit().await.expect("QUIT");
}

#[tokio::test]
async fn an_instance_whose_samples_fill_after_another_published_takes_that_dictionary() {
    let prefix = format!("zlate{}", std::process::id());
    let config = dictionary_config(&prefix);
    let late = RedisBuffer::connect(&config, "late").await.expect("connect");
    let first = RedisBuffer::connect(&config, "first").await.expect("connect");
    // `late` keeps samples while `first` trains and publishes.
    let mut late_keys = late.append(&batch(0, 1999)).await.expect("append");
    let first_keys = first.append(&batch(100_000, 2000)).await.expect("append");
    let id = first.dictionary_id().expect("trained");
    late_keys.extend(late.append(&batch(1999, 2)).await.expect("append"));
    assert_eq!(late.dictionary_id(), Some(id), "the published one is taken, not trained again");
    let dictionaries = keys_matching(late.client(), &format!("{prefix}:dictionary:*")).await;
    assert_eq!(dictionaries, [format!("{prefix}:dictionary:{id}")], "one dictionary for the prefix");
    let more = late.append(&batch(5000, 3)).await.expect("append");
    assert_eq!(dp_core::dictionary_id(&stored(late.client(), &more[0].0).await), Some(id));
    late_keys.extend(more);

    for (b, keys) in [(late, late_keys), (first, first_keys)] {
        b.remove(&keys).await.expect("remove");
        b.close().await.expect("close");
    }
    clean(&config, &prefix).await;
}

#[tokio::test]
async fn a_dictionary_key_taken_by_other_bytes_is_never_overwritten_nor_used() {
    let prefix = format!("zclash{}", std::process::id());
    let config = dictionary_config(&prefix);
    // The dictionary the instance will train (training is deterministic), and another one
    // made to carry its id: ids hash only part of a dictionary, so this can happen.
    let records = batch(0, dp_buffer_redis::TRAINING_RECORDS as i64);
    let ours = dp_core::Dictionary::train(&records, dp_buffer_redis::DICTIONARY_BYTES).expect("trains");
    let mut other =
        dp_core::Dictionary::train(&batch(50_000, 2000), 2048).expect("trains").as_bytes().to_vec();
    other[4..8].copy_from_slice(&ours.id().to_le_bytes());
    let key = format!("{prefix}:dictionary:{}", ours.id());
    let client = reopened_client(&config).await;
    let _: () = client.set(key.as_str(), other.as_slice(), None, None, false).await.expect("SET");

    let b = RedisBuffer::connect(&config, "a").await.expect("connect");
    let keys = b.append(&records).await.expect("append");
    assert_eq!(b.dictionary_id(), None, "a dictionary whose key holds other bytes is not used");
    assert_eq!(stored(&client, &key).await, other, "nor is the key overwritten");
    let published: Option<String> = client.get(format!("{prefix}:dictionary")).await.expect("GET");
    assert_eq!(published, None, "nor published");
    let more = b.append(&batch(9000, 1)).await.expect("append");
    assert_eq!(stored(&client, &more[0].0).await[0], FORMAT_VERSION_ZSTD, "zstd alone meanwhile");

    b.remove(&keys).await.expect("remove");
    b.remove(&more).await.expect("remove");
    b.close().await.expect("close");
    client.quit().await.expect("QUIT");
    clean(&config, &prefix).await;
}

#[tokio::test]
async fn a_published_id_whose_dictionary_is_gone_is_replaced() {
    let prefix = format!("zgone{}", std::process::id());
    let config = dictionary_config(&prefix);
    let client = reopened_client(&config).await;
    let _: () = client.set(format!("{prefix}:dictionary"), "12345", None, None, false).await.expect("SET");

    let b = RedisBuffer::connect(&config, "a").await.expect("connect");
    assert_eq!(b.dictionary_id(), None, "the one named is missing");
    let keys = b.append(&batch(0, 2000)).await.expect("append");
    let id = b.dictionary_id().expect("trained its own");
    let published: String = client.get(format!("{prefix}:dictionary")).await.expect("GET");
    assert_eq!(published, id.to_string(), "and published it in place of the missing one");

    b.remove(&keys).await.expect("remove");
    b.close().await.expect("close");
    client.quit().await.expect("QUIT");
    clean(&config, &prefix).await;
}

fn dictionary_config(prefix: &str) -> RedisBufferConfig {
    RedisBufferConfig {
        key_prefix: prefix.to_owned(),
        compression: Compression::ZstdDictionary,
        ..Default::default()
    }
}

/// Deletes the dictionaries under `prefix` (the buffer never does).
async fn clean(config: &RedisBufferConfig, prefix: &str) {
    let client = reopened_client(config).await;
    let keys = keys_matching(&client, &format!("{prefix}:dictionary*")).await;
    if !keys.is_empty() {
        let _: () = client.del(keys).await.expect("DEL");
    }
    client.quit().await.expect("QUIT");
}

#[tokio::test]
async fn no_dictionary_is_trained_unless_configured() {
    for compression in [Compression::None, Compression::Zstd] {
        let prefix = format!("znodict{}{compression:?}", std::process::id());
        let config = RedisBufferConfig { key_prefix: prefix.clone(), compression, ..Default::default() };
        let b = RedisBuffer::connect(&config, "a").await.expect("connect");
        let keys = b.append(&batch(0, dp_buffer_redis::TRAINING_RECORDS as i64 + 10)).await.expect("append");
        assert_eq!(b.dictionary_id(), None, "{compression:?}");
        assert!(
            keys_matching(b.client(), &format!("{prefix}:dictionary*")).await.is_empty(),
            "{compression:?}"
        );
        b.remove(&keys).await.expect("remove");
        b.close().await.expect("close");
    }
}
