//! `delivery-pipeline offsets show|reset`: where the consumer group stands on each partition
//! (Kafka's committed offset, the MySQL watermark, the log's ends, the lag), and moving Kafka's
//! committed offsets and the watermark together, to re-read a period or to skip one.
//!
//! A partition starts at the larger of its committed offset and its watermark, so moving only
//! one of them (as `kafka-consumer-groups --reset-offsets` does) rewinds nothing: `reset` moves
//! both, and only while no instance is a member of the group.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use dp_assembly::{CommitPolicy, Config};
use dp_core::Sink;
use dp_sink_mysql::MysqlSink;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

/// How long one Kafka request may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(15);

/// Where `reset` moves the partitions to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The first offset the log still holds.
    Earliest,
    /// The log end: skip everything not yet read.
    Latest,
    /// This offset (clamped to the log's range).
    Offset(i64),
    /// The first message whose timestamp is at or after this (ms since the epoch); the log end
    /// when there is none.
    Time(i64),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            _ => {
                if let Ok(offset) = s.parse::<i64>() {
                    return if offset >= 0 {
                        Ok(Self::Offset(offset))
                    } else {
                        Err(format!("`{s}`: an offset is 0 or more"))
                    };
                }
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .map(|t| Self::Time((t.unix_timestamp_nanos() / 1_000_000) as i64))
                    .map_err(|_| {
                        format!(
                            "`{s}` is not earliest, latest, an offset or an RFC 3339 time (2026-12-07T10:00:00Z)"
                        )
                    })
            }
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Earliest => f.write_str("earliest"),
            Self::Latest => f.write_str("latest"),
            Self::Offset(o) => write!(f, "offset {o}"),
            Self::Time(ms) => {
                match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(*ms) * 1_000_000)
                    .ok()
                    .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                {
                    Some(text) => f.write_str(&text),
                    None => write!(f, "{ms} ms"),
                }
            }
        }
    }
}

/// Which partitions a command applies to.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// One of `kafka.topics`; all of them when unset.
    pub topic: Option<String>,
    /// One partition; all when unset.
    pub partition: Option<i32>,
}

/// One partition as the group sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionState {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's committed offset in Kafka; `None` when nothing is committed.
    pub committed: Option<i64>,
    /// The MySQL watermark: the next offset not yet stored; `None` when there is no row.
    pub watermark: Option<i64>,
    /// The first offset the log holds.
    pub log_start: i64,
    /// The offset the next message will get.
    pub log_end: i64,
}

impl PartitionState {
    /// Where a member assigned this partition starts: the larger of the committed offset and
    /// the watermark; the log start for a group that has neither (it reads from the earliest).
    pub fn start(&self) -> i64 {
        self.committed.max(self.watermark).unwrap_or(self.log_start).max(self.log_start)
    }

    /// Messages between the start and the log end.
    pub fn lag(&self) -> i64 {
        (self.log_end - self.start()).max(0)
    }
}

/// What `reset` changed (or, dry, would change) on one partition.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// The partition before.
    pub before: PartitionState,
    /// The new committed offset and watermark.
    pub to: i64,
    /// Set when the requested offset was outside the log and was moved into it.
    pub clamped: Option<i64>,
}

/// The Kafka side: a client of the group that never joins it.
struct Group {
    consumer: BaseConsumer,
    group: String,
}

impl Group {
    fn new(config: &Config) -> anyhow::Result<Self> {
        let mut c = config.kafka.common_client_config().map_err(anyhow::Error::msg)?;
        c.set("group.id", &config.kafka.group_id).set("enable.auto.commit", "false");
        let consumer = c.create().context("kafka.brokers: cannot create a Kafka client")?;
        Ok(Self { consumer, group: config.kafka.group_id.clone() })
    }

    /// The partitions selected, with their log ends and committed offsets.
    fn partitions(&self, topics: &[String], selection: &Selection) -> anyhow::Result<Vec<PartitionState>> {
        let mut states = Vec::new();
        for topic in topics {
            let metadata = self
                .consumer
                .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
                .with_context(|| format!("kafka.brokers: cannot read the metadata of topic {topic}"))?;
            let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else { continue };
            if let Some(e) = meta.error() {
                bail!("topic {topic}: {}", RDKafkaErrorCode::from(e));
            }
            let mut partitions: Vec<i32> = meta.partitions().iter().map(|p| p.id()).collect();
            partitions.sort_unstable();
            if let Some(p) = selection.partition {
                if !partitions.contains(&p) {
                    bail!(
                        "--partition {p}: topic {topic} has partitions 0-{}",
                        partitions.len().saturating_sub(1)
                    );
                }
                partitions = vec![p];
            }
            let mut tpl = TopicPartitionList::new();
            for &p in &partitions {
                tpl.add_partition(topic, p);
            }
            let committed = self
                .consumer
                .committed_offsets(tpl, KAFKA_TIMEOUT)
                .with_context(|| format!("cannot read the committed offsets of group {}", self.group))?;
            for p in partitions {
                let (log_start, log_end) = self
                    .consumer
                    .fetch_watermarks(topic, p, KAFKA_TIMEOUT)
                    .with_context(|| format!("cannot read the log ends of {topic}/{p}"))?;
                let committed = match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                };
                states.push(PartitionState {
                    topic: topic.clone(),
                    partition: p,
                    committed,
                    watermark: None,
                    log_start,
                    log_end,
                });
            }
        }
        Ok(states)
    }

    /// The group's live members, as `client-id@host`; an error when the broker cannot say.
    fn members(&self) -> anyhow::Result<Vec<String>> {
        let groups = self
            .consumer
            .fetch_group_list(Some(&self.group), KAFKA_TIMEOUT)
            .with_context(|| format!("cannot read the members of group {}", self.group))?;
        Ok(groups
            .groups()
            .iter()
            .filter(|g| g.name() == self.group)
            .flat_map(|g| g.members())
            .map(|m| format!("{}@{}", m.client_id(), m.client_host()))
            .collect())
    }

    /// The first offset at or after `ms` per partition; the log end where there is none.
    fn offsets_at(&self, states: &[PartitionState], ms: i64) -> anyhow::Result<Vec<i64>> {
        let mut tpl = TopicPartitionList::new();
        for s in states {
            tpl.add_partition_offset(&s.topic, s.partition, Offset::Offset(ms))
                .context("building the offset request")?;
        }
        let found =
            self.consumer.offsets_for_times(tpl, KAFKA_TIMEOUT).context("cannot look offsets up by time")?;
        states
            .iter()
            .map(|s| match found.find_partition(&s.topic, s.partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Ok(o),
                Some(Offset::End) | None => Ok(s.log_end),
                Some(other) => bail!("{}/{}: unexpected offset {other:?} for a time", s.topic, s.partition),
            })
            .collect()
    }

    fn commit(&self, changes: &[Change]) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for c in changes {
            tpl.add_partition_offset(&c.before.topic, c.before.partition, Offset::Offset(c.to))
                .context("building the commit")?;
        }
        match self.consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownMemberId
                            | RDKafkaErrorCode::IllegalGeneration
                            | RDKafkaErrorCode::RebalanceInProgress
                    )
                ) =>
            {
                bail!(
                    "group {} has live members (Kafka refused the commit: {e}): stop every instance of it first (on Kubernetes, scale to 0), then reset; nothing was changed",
                    self.group
                )
            }
            Err(e) => Err(e).with_context(|| {
                format!("cannot commit the new offsets of group {}; nothing was changed", self.group)
            }),
        }
    }
}

fn topics(config: &Config, selection: &Selection) -> anyhow::Result<Vec<String>> {
    match &selection.topic {
        Some(t) if config.kafka.topics.contains(t) => Ok(vec![t.clone()]),
        Some(t) => bail!("--topic {t} is not one of kafka.topics {:?}", config.kafka.topics),
        None => Ok(config.kafka.topics.clone()),
    }
}

async fn sink(config: &Config) -> anyhow::Result<MysqlSink> {
    Ok(MysqlSink::connect(&config.mysql).await?.with_consumer_group(&config.kafka.group_id))
}

/// Every selected partition: Kafka's side and MySQL's.
pub async fn show(config: &Config, selection: &Selection) -> anyhow::Result<Vec<PartitionState>> {
    let kafka = Group::new(config)?;
    let topics = topics(config, selection)?;
    let selection = selection.clone();
    let mut states = tokio::task::spawn_blocking(move || kafka.partitions(&topics, &selection))
        .await
        .context("the Kafka task failed")??;
    let sink = sink(config).await?;
    let keys: Vec<(String, i32)> = states.iter().map(|s| (s.topic.clone(), s.partition)).collect();
    let marks = sink.watermarks(&keys).await;
    sink.close().await?;
    for (topic, partition, next) in marks.context("cannot read the offset watermarks")? {
        if let Some(s) = states.iter_mut().find(|s| s.topic == topic && s.partition == partition) {
            s.watermark = Some(next);
        }
    }
    Ok(states)
}

/// Moves the committed offsets and the watermarks of the selected partitions to `target`,
/// both together, or with `dry_run` only says what it would do. Refused while the group has
/// live members.
pub async fn reset(
    config: &Config,
    selection: &Selection,
    target: Target,
    dry_run: bool,
) -> anyhow::Result<Vec<Change>> {
    let states = show(config, selection).await?;
    let kafka = Group::new(config)?;
    let (kafka, found) = tokio::task::spawn_blocking(move || {
        let found = (|| {
            let members = kafka.members()?;
            let at = match target {
                Target::Time(ms) => Some(kafka.offsets_at(&states, ms)?),
                _ => None,
            };
            Ok::<_, anyhow::Error>((members, states, at))
        })();
        (kafka, found)
    })
    .await
    .context("the Kafka task failed")?;
    let (members, states, at) = found?;
    if !members.is_empty() {
        bail!(
            "group {} has {} live member(s) ({}): stop every instance of it first (on Kubernetes, scale to 0), then reset",
            config.kafka.group_id,
            members.len(),
            members.join(", ")
        );
    }
    // Under after_sink, records a killed instance left in Redis are written at the next start
    // before any partition is read, and raise the watermark past the new position.
    if config.commit_policy == CommitPolicy::AfterSink {
        let buffered = dp_buffer_redis::RedisBuffer::buffered_by_anyone(&config.redis).await?;
        if buffered > 0 {
            bail!(
                "redis holds {buffered} buffered record(s) under {}:buffer:* (an instance was killed rather than stopped, or still runs); the next start would write them before reading and raise the watermark past the reset: start the group once so they are written, stop it, then reset",
                config.redis.key_prefix
            );
        }
    }
    let changes = plan(states, target, at.as_deref())?;
    if dry_run || changes.is_empty() {
        return Ok(changes);
    }
    // Kafka first: it refuses a commit from outside the group while the group has members (a
    // second guard, for brokers that do not list them). If the watermark then fails, a
    // partition starts at the larger of the two: a rewind has not happened yet, a skip has;
    // nothing is lost either way, and the same reset run again finishes it.
    let changes2 = changes.clone();
    let kafka = tokio::task::spawn_blocking(move || kafka.commit(&changes2).map(|()| kafka))
        .await
        .context("the Kafka task failed")??;
    const HALF_DONE: &str =
        "Kafka's committed offsets were reset but the MySQL watermarks were not; run the same reset again";
    let targets: Vec<(String, i32, i64)> =
        changes.iter().map(|c| (c.before.topic.clone(), c.before.partition, c.to)).collect();
    let sink = sink(config).await.context(HALF_DONE)?;
    let written = sink.reset_watermarks(&targets).await;
    if let Err(e) = sink.close().await {
        tracing::warn!(error = %e, "closing the mysql pool failed");
    }
    written.context(HALF_DONE)?;
    // An instance that joined between the commit and the watermark may have read the old
    // watermark and will raise it again with its first batch.
    let joined =
        tokio::task::spawn_blocking(move || kafka.members()).await.context("the Kafka task failed")??;
    if !joined.is_empty() {
        bail!(
            "an instance joined group {} while the reset ran ({}); it may start from the old positions: stop it and run the same reset again",
            config.kafka.group_id,
            joined.join(", ")
        );
    }
    Ok(changes)
}

/// Where each partition goes: `at` holds the offsets a time target found, per partition.
fn plan(states: Vec<PartitionState>, target: Target, at: Option<&[i64]>) -> anyhow::Result<Vec<Change>> {
    let mut changes = Vec::with_capacity(states.len());
    for (i, before) in states.into_iter().enumerate() {
        // A log end below the group's position is a broker answer not to trust (a truncated or
        // recreated topic, or a broker that gets ListOffsets wrong): never move a group
        // backwards on the strength of it.
        let position = before.committed.max(before.watermark).unwrap_or(before.log_start);
        if target == Target::Latest && position > before.log_end {
            bail!(
                "{}/{}: the broker reports log end {} below the group's position {position}; refusing to move the group backwards with --to latest",
                before.topic,
                before.partition,
                before.log_end
            );
        }
        let end = before.log_end.max(position);
        let start = before.log_start.min(end);
        let wanted = match target {
            Target::Earliest => start,
            Target::Latest => end,
            Target::Offset(o) => o,
            Target::Time(_) => at.and_then(|a| a.get(i).copied()).unwrap_or(end),
        };
        let to = wanted.clamp(start, end);
        changes.push(Change { clamped: (to != wanted).then_some(wanted), before, to });
    }
    Ok(changes)
}

fn or_dash(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `offsets show` as a table.
pub fn print_states(group: &str, states: &[PartitionState]) {
    println!("group {group}");
    let width = states.iter().map(|s| s.topic.len()).max().unwrap_or(5).max(5);
    println!(
        "{:<width$}  {:>9}  {:>12}  {:>12}  {:>12}  {:>12}  {:>10}",
        "topic", "partition", "committed", "watermark", "log start", "log end", "lag"
    );
    for s in states {
        println!(
            "{:<width$}  {:>9}  {:>12}  {:>12}  {:>12}  {:>12}  {:>10}",
            s.topic,
            s.partition,
            or_dash(s.committed),
            or_dash(s.watermark),
            s.log_start,
            s.log_end,
            s.lag()
        );
    }
    let lag: i64 = states.iter().map(PartitionState::lag).sum();
    println!("total lag {lag} (a partition starts at the larger of committed and watermark)");
    let behind: Vec<String> = states
        .iter()
        .filter(|s| s.committed.max(s.watermark).is_some_and(|start| start > s.log_end))
        .map(|s| format!("{}/{}", s.topic, s.partition))
        .collect();
    if !behind.is_empty() {
        println!(
            "note: the broker reports a log end below the group's position on {} (a truncated or recreated topic, or a broker whose ListOffsets answer is wrong); their lag shows as 0",
            behind.join(", ")
        );
    }
}

/// `offsets reset` as a table of what changed.
pub fn print_changes(group: &str, target: Target, changes: &[Change], dry_run: bool) {
    let width = changes.iter().map(|c| c.before.topic.len()).max().unwrap_or(5).max(5);
    println!("{:<width$}  {:>9}  {:>24}  {:>24}", "topic", "partition", "committed", "watermark");
    for c in changes {
        let arrow = |from: Option<i64>| format!("{} -> {}", or_dash(from), c.to);
        let note =
            c.clamped.map(|w| format!("  ({w} is outside the log; moved into it)")).unwrap_or_default();
        println!(
            "{:<width$}  {:>9}  {:>24}  {:>24}{note}",
            c.before.topic,
            c.before.partition,
            arrow(c.before.committed),
            arrow(c.before.watermark)
        );
    }
    if dry_run {
        println!(
            "dry run: would reset {} partition(s) of group {group} to {target}; nothing was changed",
            changes.len()
        );
    } else {
        println!(
            "reset {} partition(s) of group {group} to {target}: committed offsets and watermarks moved",
            changes.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_refuse_what_they_cannot_be() {
        assert_eq!("earliest".parse(), Ok(Target::Earliest));
        assert_eq!("latest".parse(), Ok(Target::Latest));
        assert_eq!("42".parse(), Ok(Target::Offset(42)));
        assert_eq!("2026-12-07T10:00:00.5Z".parse(), Ok(Target::Time(1_796_637_600_500)));
        assert_eq!("2026-12-07T11:00:00+01:00".parse(), Ok(Target::Time(1_796_637_600_000)));
        assert!("-1".parse::<Target>().is_err());
        assert!("yesterday".parse::<Target>().expect_err("not a target").contains("RFC 3339"));
        assert_eq!(Target::Time(1_796_637_600_000).to_string(), "2026-12-07T10:00:00Z");
    }

    fn state(committed: Option<i64>, watermark: Option<i64>, log_start: i64, log_end: i64) -> PartitionState {
        PartitionState { topic: "t".into(), partition: 0, committed, watermark, log_start, log_end }
    }

    #[test]
    fn a_plan_moves_into_the_log_and_never_backwards_on_a_log_end_below_the_group() {
        let to = |target, s: PartitionState, at: Option<&[i64]>| {
            plan(vec![s], target, at).map(|c| (c[0].to, c[0].clamped))
        };
        let s = || state(Some(50), Some(60), 10, 100);
        assert_eq!(to(Target::Earliest, s(), None).ok(), Some((10, None)));
        assert_eq!(to(Target::Latest, s(), None).ok(), Some((100, None)));
        assert_eq!(to(Target::Offset(5), s(), None).ok(), Some((10, Some(5))), "below the log start");
        assert_eq!(to(Target::Offset(500), s(), None).ok(), Some((100, Some(500))), "past the log end");
        assert_eq!(to(Target::Time(0), s(), Some(&[42])).ok(), Some((42, None)));
        assert_eq!(to(Target::Time(0), s(), None).ok(), Some((100, None)), "no message that late: the end");
        // A broker answering a log end below the group's position (tansu does).
        let wrong = || state(Some(488), Some(488), 0, 289);
        assert!(to(Target::Latest, wrong(), None).is_err(), "never backwards with --to latest");
        assert_eq!(to(Target::Time(0), wrong(), Some(&[288])).ok(), Some((288, None)));
        assert_eq!(
            to(Target::Offset(400), wrong(), None).ok(),
            Some((400, None)),
            "up to the group's position"
        );
        // A log start above the log end must not panic.
        assert_eq!(to(Target::Earliest, state(None, None, 20, 10), None).ok(), Some((20, None)));
    }

    #[test]
    fn a_partition_starts_at_the_larger_of_committed_and_watermark() {
        let s = |committed, watermark| PartitionState {
            topic: "t".into(),
            partition: 0,
            committed,
            watermark,
            log_start: 10,
            log_end: 100,
        };
        assert_eq!((s(Some(40), Some(60)).start(), s(Some(40), Some(60)).lag()), (60, 40));
        assert_eq!(s(Some(70), None).start(), 70);
        assert_eq!(
            (s(None, None).start(), s(None, None).lag()),
            (10, 90),
            "a new group reads from the earliest"
        );
        assert_eq!(s(Some(5), None).start(), 10, "a committed offset the log no longer holds");
    }
}
