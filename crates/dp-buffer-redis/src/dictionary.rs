//! `compression = "zstd-dictionary"`: a zstd dictionary trained on the first records an
//! instance buffers, shared by every instance under the key prefix, and stored in Redis beside
//! the records that need it.
//!
//! - `<prefix>:dictionary:<id>` holds a dictionary's bytes; `<prefix>:dictionary` the id of the
//!   one new records are compressed with. A record compressed with a dictionary (format version
//!   3) names its id, and whoever reads it — restore, adoption, read-back, an instance
//!   configured without compression — fetches the dictionary by that id. A dictionary is at
//!   most [`DICTIONARY_BYTES`].
//! - A dictionary key is written once (`SET NX`), never overwritten and never deleted: ids are a
//!   hash of part of a dictionary only, so two instances could train different dictionaries
//!   with one id; the second finds the key taken by other bytes and does not use its own.
//! - An instance starting under a prefix that has a dictionary uses it at once. Otherwise it
//!   compresses with zstd alone (version 2) while it keeps samples of its first
//!   [`TRAINING_RECORDS`] records (at most [`SAMPLE_BYTES`] of each, [`TRAINING_BYTES`] in all).
//!   Then it takes the prefix's dictionary if one was published meanwhile; if not, it trains
//!   one, stores it, publishes its id unless another instance published first (`SET NX`), and
//!   uses whichever is published. Training takes ~0.1 s, once, inside the append that fills the
//!   samples.
//! - No record is written compressed with a dictionary before that dictionary is stored: a
//!   dictionary is put in use only after it is, and each append reads the one in use once.
//! - Records too uniform to train on (zstd refuses) leave the instance on zstd alone, said once
//!   in the log.

use dp_core::{BufferError, Dictionary, Record, dictionary_id, training_sample};
use fred::prelude::*;

use crate::{Compression, RedisBuffer, transient};

/// Records sampled to train a dictionary on: enough for zstd to find what they share.
pub const TRAINING_RECORDS: usize = 2000;

/// At most this much of each record is kept as a sample.
pub const SAMPLE_BYTES: usize = 4096;

/// At most this much is kept for training in all (fewer records if they are large).
pub const TRAINING_BYTES: usize = 1 << 20;

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
    /// Samples kept for training (each a record's encoded body, cut at [`SAMPLE_BYTES`]).
    samples: Vec<Vec<u8>>,
    /// Their bytes in all.
    sample_bytes: usize,
    /// Training failed: this process stays on zstd alone.
    given_up: bool,
}

impl Dictionaries {
    /// Whether enough is kept to train on.
    fn full(&self) -> bool {
        self.samples.len() >= TRAINING_RECORDS || self.sample_bytes >= TRAINING_BYTES
    }
}

impl RedisBuffer {
    /// `<prefix>:dictionary`: the id of the dictionary new records are compressed with.
    pub fn current_dictionary_key(&self) -> String {
        format!("{}:dictionary", self.key_prefix)
    }

    /// `<prefix>:dictionary:<id>`: a dictionary's bytes.
    pub fn dictionary_key(&self, id: u32) -> String {
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

    /// The prefix's published dictionary, if there is one, becomes this buffer's (at connect,
    /// and before training one). `false`: none is published, or the one named is missing.
    pub(crate) async fn load_published_dictionary(&self) -> Result<bool, fred::error::Error> {
        let Some(id) = self.client.get::<Option<String>, _>(self.current_dictionary_key()).await? else {
            return Ok(false);
        };
        let Ok(id) = id.parse::<u32>() else {
            tracing::warn!(key = %self.current_dictionary_key(), value = %id, "not a dictionary id; a new dictionary will be trained");
            return Ok(false);
        };
        match self.fetch_dictionary(id).await? {
            Some(dictionary) => {
                self.adopt_dictionary(dictionary);
                Ok(true)
            }
            None => {
                tracing::warn!(
                    key = %self.dictionary_key(id),
                    "the published dictionary is missing; records compressed with it cannot be read, a new one will be trained"
                );
                Ok(false)
            }
        }
    }

    /// Makes `dictionary` the one new records are compressed with.
    fn adopt_dictionary(&self, dictionary: Dictionary) {
        let mut d = self.dictionaries();
        if !d.known.contains(&dictionary) {
            d.known.push(dictionary.clone());
        }
        d.samples = Vec::new();
        d.sample_bytes = 0;
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

    /// After `records` were written: keeps samples of them while no dictionary is in use, and
    /// once there are enough takes the published dictionary or trains, stores and publishes
    /// one. Failures leave the buffer on zstd alone and are logged, never returned: the records
    /// are written.
    pub(crate) async fn learn_from(&self, records: &[Record]) {
        if self.compression != Compression::ZstdDictionary {
            return;
        }
        let samples = {
            let mut d = self.dictionaries();
            if d.current.is_some() || d.given_up {
                return;
            }
            for record in records {
                if d.full() {
                    break;
                }
                let mut sample = training_sample(record);
                sample.truncate(SAMPLE_BYTES);
                d.sample_bytes += sample.len();
                d.samples.push(sample);
            }
            if !d.full() {
                return;
            }
            d.sample_bytes = 0;
            std::mem::take(&mut d.samples)
        };
        // Another instance may have published one meanwhile: take it rather than train.
        match self.load_published_dictionary().await {
            Ok(true) => {
                self.log_in_use(None);
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the published zstd dictionary; retried on the next records");
                return;
            }
        }
        let started = std::time::Instant::now();
        let trained =
            tokio::task::spawn_blocking(move || Dictionary::train_on(&samples, DICTIONARY_BYTES)).await;
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
            Ok(Some(dictionary)) => {
                self.adopt_dictionary(dictionary);
                self.log_in_use(Some(training_ms));
            }
            Ok(None) => tracing::warn!(
                "another zstd dictionary is stored under the id of the one trained here; retried on the next records"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot store the zstd dictionary; retried on the next records");
            }
        }
    }

    fn log_in_use(&self, training_ms: Option<u64>) {
        if let Some(d) = self.current_dictionary() {
            tracing::info!(
                id = d.id(),
                bytes = d.as_bytes().len(),
                training_ms,
                "buffered records are now compressed with a zstd dictionary"
            );
        }
    }

    /// Stores `ours` unless its key is taken, publishes its id unless another is published,
    /// and returns the dictionary published. `None`: the key holds other bytes under our id.
    async fn publish(&self, ours: Dictionary) -> Result<Option<Dictionary>, fred::error::Error> {
        let key = self.dictionary_key(ours.id());
        let stored: Option<String> =
            self.client.set(key.as_str(), ours.as_bytes(), None, Some(SetOptions::NX), false).await?;
        if stored.is_none() {
            let there: Option<Vec<u8>> = self.client.get(key.as_str()).await?;
            if there.as_deref() != Some(ours.as_bytes()) {
                return Ok(None);
            }
        }
        let pointer = self.current_dictionary_key();
        let _: Option<String> = self
            .client
            .set(pointer.as_str(), ours.id().to_string(), None, Some(SetOptions::NX), false)
            .await?;
        let published: Option<String> = self.client.get(pointer.as_str()).await?;
        let winner = match published.and_then(|id| id.parse::<u32>().ok()) {
            Some(id) if id == ours.id() => return Ok(Some(ours)),
            Some(id) => self.fetch_dictionary(id).await?,
            None => None,
        };
        match winner {
            Some(winner) => Ok(Some(winner)),
            // The published one is gone (deleted by hand): ours, stored, replaces it. Were
            // another instance to do the same at once, each record still names its dictionary.
            None => {
                self.client
                    .set::<(), _, _>(pointer.as_str(), ours.id().to_string(), None, None, false)
                    .await?;
                Ok(Some(ours))
            }
        }
    }
}
