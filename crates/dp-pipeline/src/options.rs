//! The runtime's settings: batching, retries, the commit policy and the shutdown deadline,
//! gathered in [`PipelineOptions`], which [`Pipeline::new`](crate::Pipeline::new) validates.
//!
//! Each type is plain serde data with defaults and rejects unknown keys, so a host can embed
//! it in its own configuration file; the `delivery-pipeline` binary reads it from `[buffer]`,
//! `[retry]`, `shutdown_timeout` and `commit_policy`.

use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::filter::RecordFilter;

/// A setting that cannot work, naming its key (`buffer.max_rows`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidSetting {
    /// The key, dotted as in the configuration file (`retry.max_backoff`).
    pub key: String,
    /// What is wrong and, where one exists, the fix.
    pub message: String,
}

impl InvalidSetting {
    /// A setting `key` that is wrong for `message`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }

    /// Reads a validation message of the form `key: message` (how the backend crates'
    /// `validate` functions word theirs); the whole line is the message when it has no key.
    pub fn from_line(line: &str) -> Self {
        match line.split_once(": ") {
            Some((key, message)) if !key.is_empty() && !key.contains(' ') => Self::new(key, message),
            _ => Self::new("", line),
        }
    }
}

/// Everything the runtime needs besides its three parts. Build it from defaults and change
/// what you need; [`Pipeline::new`](crate::Pipeline::new) refuses settings that cannot work.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PipelineOptions {
    /// When batches are flushed, and how much is held while the sink fails.
    pub buffer: BatchingConfig,
    /// Retrying a batch the sink could not write.
    pub retry: RetryConfig,
    /// How long the drain at shutdown may take; what is left stays in the buffer for the next
    /// start. 25 s by default.
    pub shutdown_timeout: Duration,
    /// When the source may commit past a record.
    pub commit_policy: CommitPolicy,
    /// Which records to drop before they are written ahead or stored; none by default.
    pub filter: Option<Arc<dyn RecordFilter>>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            buffer: BatchingConfig::default(),
            retry: RetryConfig::default(),
            shutdown_timeout: Duration::from_secs(25),
            commit_policy: CommitPolicy::default(),
            filter: None,
        }
    }
}

impl PipelineOptions {
    /// The defaults: 1000-row batches or 30 s, retries for ever from 100 ms to 30 s, 25 s to
    /// drain, commits after the sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the batching settings.
    #[must_use]
    pub fn buffer(mut self, buffer: BatchingConfig) -> Self {
        self.buffer = buffer;
        self
    }

    /// Sets the retry settings.
    #[must_use]
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the shutdown deadline.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Sets the commit policy.
    #[must_use]
    pub fn commit_policy(mut self, policy: CommitPolicy) -> Self {
        self.commit_policy = policy;
        self
    }

    /// Drops the records `filter` names before they are written ahead or stored: each is
    /// acknowledged and counted in `dp_filtered_total{reason}` and the
    /// [`filtered`](crate::StatsSnapshot::filtered) counter.
    #[must_use]
    pub fn filter(mut self, filter: Arc<dyn RecordFilter>) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Checks every setting; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.buffer.validate()?;
        self.retry.validate()?;
        validate_shutdown_timeout(self.shutdown_timeout)
    }
}

/// Checks a shutdown deadline (`shutdown_timeout`): more than zero, at most an hour.
pub fn validate_shutdown_timeout(timeout: Duration) -> Result<(), InvalidSetting> {
    if timeout.is_zero() {
        return Err(InvalidSetting::new("shutdown_timeout", "must be greater than zero"));
    }
    if timeout > Duration::from_secs(3600) {
        return Err(InvalidSetting::new("shutdown_timeout", "at most 1h"));
    }
    Ok(())
}

/// When Kafka offsets may advance past a message. In both, an offset never passes a message
/// that is held only in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitPolicy {
    /// Once the message is in MySQL (or its dead-letter table). Redis only speeds up restarts;
    /// losing Redis loses nothing. Kafka lag includes what is buffered.
    #[default]
    AfterSink,
    /// Once the message is in Redis, as the original design had it: Kafka lag reflects
    /// consumption, and Redis (with AOF persistence) is the only copy until the flush.
    AfterBuffer,
}

/// Batching: when a batch is flushed, how large it may be, and how much the instance holds
/// while the sink fails (`[buffer]` in the binary's settings, `DP_BUFFER__*`: the design's
/// in-memory buffer).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Flush when this many records are buffered; also the largest batch. The instance holds at
    /// most twice this many records: the batches handed to the sink and the one being collected
    /// (while the sink fails, one more may be collected, spilled as soon as it is full).
    pub max_rows: usize,
    /// Flush when the oldest buffered record has waited this long (`30s`, `500ms`).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// While the sink is failing, the most records this instance holds, in memory and in the
    /// write-ahead buffer together. Beyond the two batches memory holds, full batches are kept
    /// in the buffer only (*spilled*) and read back once the sink recovers; at this limit the
    /// Kafka partitions are paused. `2 × max_rows` turns spilling off. Unset: the larger of
    /// 100,000 and `2 × max_rows` ([`BatchingConfig::max_buffered_rows`]).
    pub max_buffered_rows: Option<usize>,
    /// The same limit in payload bytes (`"256 MiB"`, or a number of bytes).
    pub max_buffered_bytes: ByteSize,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_rows: 1000,
            flush_interval: Duration::from_secs(30),
            max_buffered_rows: None,
            max_buffered_bytes: ByteSize::mib(256),
        }
    }
}

impl BatchingConfig {
    /// The limit on records held while the sink fails: `max_buffered_rows` when set, else the
    /// larger of 100,000 and `2 × max_rows`.
    pub fn max_buffered_rows(&self) -> usize {
        self.max_buffered_rows.unwrap_or_else(|| (2 * self.max_rows).max(100_000))
    }
}

/// Exponential backoff with full jitter for transient sink errors (`[retry]`, `DP_RETRY__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First delay before a retry.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Largest delay between retries.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Growth factor of the delay.
    pub multiplier: f32,
    /// Give up after this many retries and stop the pipeline (nothing is lost: the batch stays
    /// in Redis and uncommitted in Kafka). Unset: retry for ever.
    pub max_retries: Option<u32>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            max_retries: None,
        }
    }
}

impl BatchingConfig {
    /// Checks the batching settings (`buffer.*`).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let bad = |key: &str, message: String| Err(InvalidSetting::new(format!("buffer.{key}"), message));
        if self.max_rows == 0 {
            return bad("max_rows", "must be at least 1".into());
        }
        if self.max_rows > 100_000 {
            return bad("max_rows", "at most 100000 (memory holds two batches of this size)".into());
        }
        if self.flush_interval.is_zero() {
            return bad("flush_interval", "must be greater than zero, e.g. \"30s\"".into());
        }
        if self.flush_interval > Duration::from_secs(24 * 3600) {
            return bad("flush_interval", "at most 24h".into());
        }
        if self.max_buffered_rows() < 2 * self.max_rows {
            return bad(
                "max_buffered_rows",
                format!(
                    "must be at least 2 × buffer.max_rows = {} (that value turns holding batches in Redis only off)",
                    2 * self.max_rows
                ),
            );
        }
        if self.max_buffered_bytes.as_u64() == 0 {
            return bad("max_buffered_bytes", "must be greater than zero, e.g. \"256 MiB\"".into());
        }
        Ok(())
    }
}

impl RetryConfig {
    /// Checks the retry settings (`retry.*`).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.max_backoff > Duration::from_secs(24 * 3600) {
            return Err(InvalidSetting::new("retry.max_backoff", "at most 24h"));
        }
        if self.initial_backoff.is_zero() || self.max_backoff < self.initial_backoff {
            return Err(InvalidSetting::new(
                "retry.initial_backoff",
                "need 0 < retry.initial_backoff <= retry.max_backoff",
            ));
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err(InvalidSetting::new("retry.multiplier", "must be a number >= 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let o = PipelineOptions::new();
        o.validate().expect("defaults validate");
        assert_eq!(o.buffer.max_rows, 1000);
        assert_eq!(o.buffer.flush_interval, Duration::from_secs(30));
        assert_eq!(o.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(o.buffer.max_buffered_rows(), 100_000);
    }

    #[test]
    fn the_outage_limit_follows_a_large_batch_size_unless_set() {
        let mut o = PipelineOptions::new();
        o.buffer.max_rows = 100_000;
        o.validate().expect("the largest batch size is valid on its own");
        assert_eq!(o.buffer.max_buffered_rows(), 200_000);
        o.buffer.max_buffered_rows = Some(150_000);
        assert_eq!(o.validate().expect_err("below two batches").key, "buffer.max_buffered_rows");
    }

    #[test]
    fn each_invalid_setting_names_its_key() {
        type Mutation = Box<dyn Fn(&mut PipelineOptions)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("buffer.max_rows", Box::new(|o| o.buffer.max_rows = 0)),
            ("buffer.max_rows", Box::new(|o| o.buffer.max_rows = 100_001)),
            ("buffer.flush_interval", Box::new(|o| o.buffer.flush_interval = Duration::ZERO)),
            ("buffer.max_buffered_rows", Box::new(|o| o.buffer.max_buffered_rows = Some(1_999))),
            ("buffer.max_buffered_bytes", Box::new(|o| o.buffer.max_buffered_bytes = ByteSize::b(0))),
            ("retry.multiplier", Box::new(|o| o.retry.multiplier = 0.5)),
            ("retry.initial_backoff", Box::new(|o| o.retry.initial_backoff = Duration::ZERO)),
            ("retry.max_backoff", Box::new(|o| o.retry.max_backoff = Duration::from_secs(100_000))),
            ("shutdown_timeout", Box::new(|o| o.shutdown_timeout = Duration::ZERO)),
        ];
        for (key, mutate) in cases {
            let mut o = PipelineOptions::new();
            mutate(&mut o);
            let err = o.validate().expect_err(key);
            assert_eq!(err.key, key, "expected an error naming {key}, got: {err}");
        }
    }

    #[test]
    fn a_backend_message_keeps_its_key() {
        assert_eq!(
            InvalidSetting::from_line("kafka.topics: at least one"),
            InvalidSetting::new("kafka.topics", "at least one")
        );
        assert_eq!(InvalidSetting::from_line("no key here").key, "");
    }
}
