//! Leases and adoption: each instance renews `<prefix>:lease:<id>` and registers in
//! `<prefix>:instances`; another instance claims the buffer of one whose lease expired (an
//! atomic script sets `<prefix>:claim:<id>` only while the lease is absent, and only once) and
//! delivers it. Appends are fenced against a claim (see `APPEND_SCRIPT`).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use dp_core::{BufferError, Leases, Orphan};
use fred::prelude::*;

use crate::keys::is_key_segment;
use crate::{RedisBuffer, transient};

/// Registers the instance, renews its lease and reports whether someone holds a claim on it,
/// in one atomic step.
pub(crate) const RENEW_SCRIPT: &str = r#"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return redis.call('EXISTS', KEYS[3])
"#;

/// Renews the lease and reports whether someone holds a claim, in one atomic step: the cluster
/// form of `RENEW_SCRIPT`, whose keys share the instance id's hash slot (the registry, shared by
/// every instance, is added to after it).
pub(crate) const RENEW_LEASE_SCRIPT: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('EXISTS', KEYS[2])
"#;

/// Sets the claim on an orphan only while its lease is absent, and only once.
pub(crate) const CLAIM_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"#;

pub(crate) fn being_adopted() -> BufferError {
    BufferError::transient(
        "this instance's buffer is being adopted by another instance (its lease had expired); holding records in memory",
    )
}

impl RedisBuffer {
    pub(crate) async fn renew_lease(&self) -> Result<(), fred::error::Error> {
        let sent = Instant::now();
        let lease = self.lease_key(&self.instance_id);
        let claim = self.claim_key(&self.instance_id);
        let ttl = (self.lease_ttl.as_millis() as i64).to_string();
        let claimed: i64 = if self.clustered {
            let claimed: i64 = self
                .client
                .eval(RENEW_LEASE_SCRIPT, vec![lease, claim], vec![dp_core::unix_millis().to_string(), ttl])
                .await?;
            // Registered once the lease exists: a registered id without a lease has expired.
            self.client.sadd::<(), _, _>(self.registry_key(), self.instance_id.as_str()).await?;
            claimed
        } else {
            self.client
                .eval(
                    RENEW_SCRIPT,
                    vec![self.registry_key(), lease, claim],
                    vec![self.instance_id.clone(), dp_core::unix_millis().to_string(), ttl],
                )
                .await?
        };
        // Three quarters of the TTL, measured from before the request: margin for clock drift.
        let until = (claimed == 0).then(|| sent + self.lease_ttl * 3 / 4);
        if let Ok(mut u) = self.unclaimed_until.lock() {
            *u = until;
        }
        Ok(())
    }

    pub(crate) fn surely_unclaimed(&self) -> bool {
        self.unclaimed_until.lock().ok().and_then(|u| *u).is_some_and(|u| Instant::now() < u)
    }
}

#[async_trait]
impl Leases for RedisBuffer {
    fn heartbeat_interval(&self) -> Duration {
        self.lease_ttl / 3
    }

    async fn heartbeat(&self) -> Result<(), BufferError> {
        self.renew_lease().await.map_err(|e| transient("lease renewal", e))
    }

    async fn claim_orphan(&self) -> Result<Option<Orphan>, BufferError> {
        let members: Vec<String> =
            self.client.smembers(self.registry_key()).await.map_err(|e| transient("SMEMBERS", e))?;
        for instance in members {
            if instance == self.instance_id || !is_key_segment(&instance) {
                continue;
            }
            let claim_ttl = (self.lease_ttl.as_millis() * 10).to_string();
            // Lease and claim share a slot (one server, or the id's hash tag in a cluster).
            let won: i64 = self
                .client
                .eval(
                    CLAIM_SCRIPT,
                    vec![self.lease_key(&instance), self.claim_key(&instance)],
                    vec![self.instance_id.clone(), claim_ttl],
                )
                .await
                .map_err(|e| transient("orphan claim", e))?;
            if won == 1 {
                let records = self.load(&instance).await?;
                tracing::info!(orphan = %instance, records = records.len(), "claimed the buffer of an instance whose lease expired");
                return Ok(Some(Orphan { instance, records }));
            }
        }
        Ok(None)
    }

    async fn release_orphan(&self, instance: &str) -> Result<(), BufferError> {
        let left = self.scan_keys_of(instance).await.map_err(|e| transient("SCAN", e))?;
        if left.is_empty() {
            self.client
                .srem::<(), _, _>(self.registry_key(), instance)
                .await
                .map_err(|e| transient("SREM", e))?;
        }
        self.client.del::<(), _>(self.claim_key(instance)).await.map_err(|e| transient("DEL", e))
    }
}
