//! `compression = "zstd-dictionary"`: a zstd dictionary trained on the first records an
//! instance buffers, shared by every instance under the key prefix, and stored in Redis beside
//! the records that need it.
//!
//! - `<prefix>:dictionary:<id>` holds a dictionary's bytes; `<prefix>:dictionary` the id of the
//!   one new records are compressed with. Both are written once and never expire: a record
//!   compressed with a dictionary (format version 3) names its id, and whoever reads it —
//!   restore, adoption, read-back, an instance configured without compression — fetches the
//!   dictionary by that id. A dictionary is at most [`DICTIONARY_BYTES`].
//! - An instance starting under a prefix that has a dictionary uses it at once. Otherwise it
//!   compresses with zstd alone (version 2) while it keeps its first [`TRAINING_RECORDS`]
//!   records, trains on them, stores the dictionary, and publishes its id only if no other
//!   instance published one first (`SET NX`); the loser deletes its own, which no record used,
//!   and takes the winner's.
//! - No record is written compressed with a dictionary before that dictionary is stored.
//! - Records too uniform to train on (zstd refuses) leave the instance on zstd alone, said once
//!   in the log.

use dp_core::{BufferError, Dictionary, Record, dictionary_id};
use fred::prelude::*;

use crate::{Compression, RedisBuffer, transient};

/// Records kept to train a dictionary on: enough for zstd to find what they share.
pub const TRAINING_RECORDS: usize = 2000;

/// The most bytes a trained dictionary takes (measured for 500-byte JSON events: 4 KiB
/// compresses as well as 16 KiB, `scripts/redis-value-sizes.py`).
pub const DICTIONARY_BYTES: usize = 4096;

/// What one buffer knows of dictionaries.
#[derive(Debug, Default)]
pub(crate) struct Dictionaries {
    /// What new records are compressed with, once it is stored in Redis.
    current: Option<Dictionary>,
    /// Every dictionary this buffer has fetched or trained, for reading records.
    known: Vec<Dictionary>,
    /// Records kept for training, until [`TRAINING_RECORDS`].
    samples: Vec<Record>,
    /// Training failed: this process stays on zstd alone.
    given_up: bool,
}

impl RedisBuffer {
    /// `<prefix>:dictionary`: the id of the dictionary new records are compressed with.
    pub(crate) fn current_dictionary_key(&self) -> String {
        format!("{}:dictionary", self.key_prefix)
    }

    /// `<prefix>:dictionary:<id>`: a dictionary's bytes.
    pub(crate) fn dictionary_key(&self, id: u32) -> String {
        format!("{}:dictionary:{id}", self.key_prefix)
    }

    fn dictionaries(&self) -> std::sync::MutexGuard<'_, Dictionaries> {
        self.dictionaries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The dictionary new records are compressed with, if there is one yet.
    pub(crate) fn current_dictionary(&self) -> Option<Dictionary> {
        self.dictionaries().current.clone()
    }

    /// The id of the dictionary new records are compressed with, if there is one yet.
    pub fn dictionary_id(&self) -> Option<u32> {
        self.dictionaries().current.as_ref().map(Dictionary::id)
    }

    /// At connect: the prefix's published dictionary, if any, becomes this buffer's.
    pub(crate) async fn load_published_dictionary(&self) -> Result<(), fred::error::Error> {
        let Some(id) = self.client.get::<Option<String>, _>(self.current_dictionary_key()).await? else {
            return Ok(());
        };
        let Ok(id) = id.parse::<u32>() else {
            tracing::warn!(key = %self.current_dictionary_key(), value = %id, "not a dictionary id; a new dictionary will be trained");
            return Ok(());
        };
        match self.fetch_dictionary(id).await? {
            Some(dictionary) => self.adopt_dictionary(dictionary),
            None => tracing::warn!(
                key = %self.dictionary_key(id),
                "the published dictionary is missing; records compressed with it cannot be read, a new one will be trained"
            ),
        }
        Ok(())
    }

    /// Makes `dictionary` the one new records are compressed with.
    fn adopt_dictionary(&self, dictionary: Dictionary) {
        let mut d = self.dictionaries();
        if !d.known.contains(&dictionary) {
            d.known.push(dictionary.clone());
        }
        d.samples = Vec::new();
        d.current = Some(dictionary);
    }

    /// Reads `<prefix>:dictionary:<id>`: `None` if it is absent or not that dictionary.
    async fn fetch_dictionary(&self, id: u32) -> Result<Option<Dictionary>, fred::error::Error> {
        let key = self.dictionary_key(id);
        let Some(bytes) = self.client.get::<Option<Vec<u8>>, _>(key.as_str()).await? else {
            return Ok(None);
        };
        match Dictionary::from_bytes(bytes) {
            Ok(d) if d.id() == id => Ok(Some(d)),
            Ok(d) => {
                tracing::error!(key, found = d.id(), "the key holds another dictionary");
                Ok(None)
            }
            Err(e) => {
                tracing::error!(key, error = %e, "the key holds no dictionary");
                Ok(None)
            }
        }
    }

    /// Every dictionary known, after fetching those `values` name and this buffer has not seen.
    /// A dictionary missing from Redis is left out: its records fail to decode and are
    /// quarantined, never dropped.
    pub(crate) async fn dictionaries_for<'a>(
        &self,
        values: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Vec<Dictionary>, BufferError> {
        let mut wanted: Vec<u32> = values.filter_map(dictionary_id).collect();
        wanted.sort_unstable();
        wanted.dedup();
        wanted.retain(|id| !self.dictionaries().known.iter().any(|d| d.id() == *id));
        for id in wanted {
            if let Some(d) =
                self.fetch_dictionary(id).await.map_err(|e| transient("GET of a dictionary", e))?
            {
                self.dictionaries().known.push(d);
            }
        }
        Ok(self.dictionaries().known.clone())
    }

    /// After `records` were written: keeps them for training while no dictionary is in use,
    /// and trains, stores and publishes one once there are enough. Failures leave the buffer
    /// on zstd alone and are logged, never returned: the records are written.
    pub(crate) async fn learn_from(&self, records: &[Record]) {
        if self.compression != Compression::ZstdDictionary {
            return;
        }
        let samples = {
            let mut d = self.dictionaries();
            if d.current.is_some() || d.given_up {
                return;
            }
            let room = TRAINING_RECORDS.saturating_sub(d.samples.len());
            d.samples.extend(records.iter().take(room).cloned());
            if d.samples.len() < TRAINING_RECORDS {
                return;
            }
            std::mem::take(&mut d.samples)
        };
        let started = std::time::Instant::now();
        let trained =
            tokio::task::spawn_blocking(move || Dictionary::train(&samples, DICTIONARY_BYTES)).await;
        let training_ms = started.elapsed().as_millis() as u64;
        let ours = match trained {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot train a zstd dictionary on the first records; staying with zstd alone");
                self.dictionaries().given_up = true;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "dictionary training did not finish; retried on the next records");
                return;
            }
        };
        match self.publish(ours).await {
            Ok(dictionary) => {
                self.adopt_dictionary(dictionary.clone());
                tracing::info!(
                    id = dictionary.id(),
                    bytes = dictionary.as_bytes().len(),
                    training_ms,
                    "buffered records are now compressed with a zstd dictionary"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot store the zstd dictionary; retried on the next records");
            }
        }
    }

    /// Stores `ours` and publishes its id unless another instance published first: returns
    /// the dictionary published.
    async fn publish(&self, ours: Dictionary) -> Result<Dictionary, fred::error::Error> {
        let key = self.dictionary_key(ours.id());
        self.client.set::<(), _, _>(key.as_str(), ours.as_bytes(), None, None, false).await?;
        let published: Option<String> = self
            .client
            .set(self.current_dictionary_key(), ours.id().to_string(), None, Some(SetOptions::NX), false)
            .await?;
        if published.is_some() {
            return Ok(ours);
        }
        let winner: Option<String> = self.client.get(self.current_dictionary_key()).await?;
        let winner = match winner.and_then(|id| id.parse::<u32>().ok()) {
            Some(id) if id == ours.id() => return Ok(ours),
            Some(id) => self.fetch_dictionary(id).await?,
            None => None,
        };
        match winner {
            Some(winner) => {
                // Nothing was compressed with ours.
                self.client.del::<(), _>(key.as_str()).await?;
                Ok(winner)
            }
            // The published one is gone (deleted by hand): ours replaces it. Were another
            // instance to do the same at once, each record still names the dictionary it needs.
            None => {
                self.client
                    .set::<(), _, _>(self.current_dictionary_key(), ours.id().to_string(), None, None, false)
                    .await?;
                Ok(ours)
            }
        }
    }
}
