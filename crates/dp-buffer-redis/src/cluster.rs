//! Commands over every primary of a Redis Cluster (one server otherwise): scans, pinging, and the
//! multi-key commands split by hash slot, among them the spread append, which records its keys
//! under `<prefix>:pending:{<id>}` until every write is confirmed.

use dp_core::{BufferError, Record};
use fred::prelude::*;

use crate::keys::uuid_of;
use crate::lease::being_adopted;
use crate::{RedisBuffer, transient};

pub(crate) const PAGE: usize = 1000;

/// Indices of `keys` grouped by cluster hash slot, each group in the keys' order.
pub(crate) fn by_slot(keys: &[impl AsRef<str>]) -> Vec<Vec<usize>> {
    let mut groups: std::collections::BTreeMap<u16, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        groups.entry(fred::util::redis_keyslot(k.as_ref().as_bytes())).or_default().push(i);
    }
    groups.into_values().collect()
}

impl RedisBuffer {
    /// Appends spread over a cluster's slots: no one command, and no script, covers a chunk.
    pub(crate) fn spread(&self) -> bool {
        self.clustered && !self.hash_tag
    }

    /// The primaries of the cluster, from the client's routing table.
    pub(crate) fn primaries(&self) -> Result<Vec<Server>, fred::error::Error> {
        self.client
            .cached_cluster_state()
            .map(|state| state.unique_primary_nodes())
            .filter(|nodes| !nodes.is_empty())
            .ok_or_else(|| {
                fred::error::Error::new(fred::error::ErrorKind::Cluster, "no cluster routing table yet")
            })
    }

    /// Whether the servers this instance's appends need answer: the server; with spread
    /// cluster keys every primary, so a node that is down keeps the buffer unhealthy rather than
    /// failing every append (each touches every node); with hash-tagged cluster keys nothing
    /// here, as the claim check that follows goes to the one node holding them.
    pub(crate) async fn ping_all(&self) -> Result<(), fred::error::Error> {
        if !self.clustered {
            return self.client.ping::<()>(None).await;
        }
        if self.hash_tag {
            return Ok(());
        }
        for server in self.primaries()? {
            self.client.with_cluster_node(server).ping::<()>(None).await?;
        }
        Ok(())
    }

    /// How many write-ahead keys this instance has in Redis now.
    pub async fn count_keys(&self) -> Result<usize, fred::error::Error> {
        Ok(self.scan_keys().await?.len())
    }

    pub(crate) async fn scan_keys(&self) -> Result<Vec<String>, fred::error::Error> {
        self.scan_keys_of(&self.instance_id).await
    }

    /// Every key of `instance`'s buffer, both forms, in arrival (uuid v7) order; in a cluster
    /// scanned on every primary.
    pub(crate) async fn scan_keys_of(&self, instance: &str) -> Result<Vec<String>, fred::error::Error> {
        use futures::TryStreamExt as _;
        let mut keys: Vec<String> = Vec::new();
        for prefix in self.buffer_prefixes_of(instance) {
            let pattern = format!("{prefix}*");
            let found: Vec<String> = if self.clustered {
                self.client
                    .scan_cluster_buffered(pattern, Some(PAGE as u32), None)
                    .map_ok(|k| k.into_string().unwrap_or_default())
                    .try_collect()
                    .await?
            } else {
                self.client
                    .scan_buffered(pattern, Some(PAGE as u32), None)
                    .map_ok(|k| k.into_string().unwrap_or_default())
                    .try_collect()
                    .await?
            };
            keys.extend(found);
        }
        keys.retain(|k| !k.is_empty());
        // Both forms end in the uuid, which orders them by arrival.
        keys.sort_unstable_by(|a, b| uuid_of(a).cmp(uuid_of(b)).then_with(|| a.cmp(b)));
        keys.dedup();
        Ok(keys)
    }

    /// `scan_keys_of`, repeated in a cluster until two scans agree: a scan that runs while a slot
    /// migrates between nodes can miss the keys moving, and a missed key would be a record a
    /// restore or an adoption skips while the watermark rises over it. (Nothing else adds or
    /// removes the keys meanwhile: a restore runs before consuming, an orphan is fenced.)
    pub(crate) async fn scan_keys_settled(&self, instance: &str) -> Result<Vec<String>, fred::error::Error> {
        let mut keys = self.scan_keys_of(instance).await?;
        if !self.clustered {
            return Ok(keys);
        }
        for _ in 0..10 {
            let again = self.scan_keys_of(instance).await?;
            if again == keys {
                return Ok(keys);
            }
            keys = again;
        }
        tracing::warn!(
            instance,
            keys = keys.len(),
            "the cluster's keys kept moving during ten scans (a resharding?); going on with the last scan"
        );
        Ok(keys)
    }

    /// Values of `keys` in order (`Value::Null` where a key is missing): one `MGET` per page of
    /// keys; in a cluster one per hash slot of the page, sent together.
    pub(crate) async fn mget_all(&self, keys: &[&str]) -> Result<Vec<Value>, fred::error::Error> {
        let mut out = Vec::with_capacity(keys.len());
        for page in keys.chunks(PAGE) {
            if !self.clustered {
                let values: Vec<Value> = self.client.mget(page.to_vec()).await?;
                out.extend(values);
                continue;
            }
            let groups = by_slot(page);
            let replies = futures::future::join_all(
                groups
                    .iter()
                    .map(|g| self.client.mget::<Value, _>(g.iter().map(|&i| page[i]).collect::<Vec<_>>())),
            )
            .await;
            let mut values = vec![Value::Null; page.len()];
            for (g, reply) in groups.iter().zip(replies) {
                let reply = match reply? {
                    Value::Array(v) => v,
                    one => vec![one],
                };
                if reply.len() != g.len() {
                    return Err(fred::error::Error::new(
                        fred::error::ErrorKind::Protocol,
                        format!("MGET of {} keys answered {} values", g.len(), reply.len()),
                    ));
                }
                for (&i, v) in g.iter().zip(reply) {
                    values[i] = v;
                }
            }
            out.extend(values);
        }
        Ok(out)
    }

    /// `UNLINK` of `keys`: one per page of keys; in a cluster one per hash slot, sent together.
    pub(crate) async fn unlink_all(&self, keys: &[&str]) -> Result<(), fred::error::Error> {
        for page in keys.chunks(PAGE) {
            if !self.clustered {
                self.client.unlink::<i64, _>(page.to_vec()).await?;
                continue;
            }
            let groups = by_slot(page);
            let replies = futures::future::join_all(
                groups
                    .iter()
                    .map(|g| self.client.unlink::<i64, _>(g.iter().map(|&i| page[i]).collect::<Vec<_>>())),
            )
            .await;
            replies.into_iter().try_for_each(|r| r.map(drop))?;
        }
        Ok(())
    }

    /// A cluster append without hash tag. The keys spread over the slots, so the chunk cannot
    /// be one `MSET` nor one fenced script: it is one `MSET` per slot (nearly one per key),
    /// sent together (the client pipelines them on each node's connection).
    ///
    /// Fenced by the lease's timing: a page is sent only while a renewal that saw no claim is
    /// less than three quarters of a TTL old (renewed first if needed), and takes at most
    /// `command_timeout` (at most a quarter of the TTL, checked at startup), so every write
    /// lands before the lease can expire, hence before a claim can exist.
    ///
    /// Not atomic, so made to look atomic: the chunk's keys are recorded under
    /// `<prefix>:pending:{<id>}` before the writes and that record is deleted once every write
    /// is confirmed, before `Ok`. A failure part-way deletes the chunk's keys (before anything
    /// else is appended; the health check fails until they are gone); a process that dies
    /// part-way leaves the record, and the next restore or adoption deletes those keys first.
    /// Either way no partial chunk is ever restored, so a partition never has a key in Redis
    /// after a record held in memory only, and the records of a failed append were never
    /// acknowledged as buffered (Kafka has them).
    pub(crate) async fn append_spread(
        &self,
        keys: &[String],
        records: &[Record],
        dictionary: Option<&dp_core::Dictionary>,
    ) -> Result<(), BufferError> {
        self.settle().await.map_err(|e| transient("UNLINK of a failed append's keys", e))?;
        let pending = self.pending_key(&self.instance_id);
        self.client
            .set::<(), _, _>(&pending, keys.join("\n"), None, None, false)
            .await
            .map_err(|e| transient("SET of the pending append", e))?;
        let mut result = Ok(());
        for (ks, rs) in keys.chunks(PAGE).zip(records.chunks(PAGE)) {
            result = self.write_spread(ks, rs, dictionary).await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = self
                .client
                .del::<(), _>(&pending)
                .await
                .map_err(|e| transient("DEL of the pending append", e));
        }
        if result.is_err() {
            if let Ok(mut u) = self.unsettled.lock() {
                u.extend_from_slice(keys);
            }
            if let Err(cleanup) = self.settle().await {
                tracing::warn!(error = %cleanup, keys = keys.len(), "cannot delete the keys of a failed append yet; retried before the next append");
            }
        }
        result
    }

    /// One page of a spread append: the fence's window, then one `MSET` per slot.
    pub(crate) async fn write_spread(
        &self,
        keys: &[String],
        records: &[Record],
        dictionary: Option<&dp_core::Dictionary>,
    ) -> Result<(), BufferError> {
        if !self.surely_unclaimed() {
            self.renew_lease().await.map_err(|e| transient("lease renewal", e))?;
            if !self.surely_unclaimed() {
                return Err(being_adopted());
            }
        }
        // Separate commands rather than a client pipeline: a command that timed out is dropped
        // by the client, never sent after a reconnect (a pipeline's would be).
        let groups = by_slot(keys);
        let replies = futures::future::join_all(groups.iter().map(|g| {
            let pairs: Vec<(&str, Vec<u8>)> =
                g.iter().map(|&i| (keys[i].as_str(), self.encode(&records[i], dictionary))).collect();
            self.client.mset(pairs)
        }))
        .await;
        replies.into_iter().try_for_each(|r| r).map_err(|e| transient("MSET", e))
    }

    /// Deletes the keys failed spread appends may have left, then their pending record; fails
    /// while any is left.
    pub(crate) async fn settle(&self) -> Result<(), fred::error::Error> {
        let keys = match self.unsettled.lock() {
            Ok(mut u) => std::mem::take(&mut *u),
            Err(_) => return Ok(()),
        };
        if keys.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let result = async {
            self.unlink_all(&names).await?;
            self.client.del::<(), _>(self.pending_key(&self.instance_id)).await
        }
        .await;
        if result.is_err()
            && let Ok(mut u) = self.unsettled.lock()
        {
            u.splice(0..0, keys);
        }
        result
    }

    /// Deletes the keys of a spread append `instance` had in flight when it stopped (see
    /// `append_spread`), so a restore or an adoption never takes part of a chunk.
    pub(crate) async fn clear_pending(&self, instance: &str) -> Result<(), fred::error::Error> {
        let pending = self.pending_key(instance);
        let Some(list) = self.client.get::<Option<String>, _>(&pending).await? else {
            return Ok(());
        };
        let keys: Vec<&str> = list.split('\n').filter(|k| !k.is_empty()).collect();
        self.unlink_all(&keys).await?;
        self.client.del::<(), _>(&pending).await?;
        tracing::info!(
            instance,
            keys = keys.len(),
            "deleted the keys of an append cut short (never acknowledged as buffered; Kafka still has its records)"
        );
        Ok(())
    }
}
