//! Shared harness of the integration tests: real Kafka (tansu on 127.0.0.1:9092, started by
//! `scripts/kafka.sh start`), real MariaDB and Redis. Every test gets its own topic, consumer
//! group, instance id (hence Redis keys) and table, so tests never collide.

#![allow(dead_code)]

pub mod durable_kafka;
pub mod mariadb;
pub mod mysql;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use delivery_pipeline::produce::{ProduceOptions, ensure_topic, produce, producer};
use dp_assembly::Config;
use fred::prelude::*;
use mysql_async::prelude::Queryable;

pub const KAFKA: &str = "127.0.0.1:9092";
pub const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Fails loudly, naming the fix, when a service the tests need is not answering.
pub fn require_services() {
    for (name, addr, fix) in [
        ("Kafka", KAFKA, "run `scripts/kafka.sh start`"),
        ("MariaDB", "127.0.0.1:3306", "start MariaDB (user root, empty password, database test)"),
        ("Redis", "127.0.0.1:6379", "start redis-server on 127.0.0.1:6379"),
    ] {
        let addr = addr.parse().expect("static address");
        if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
            panic!("{name} is not answering on {addr}: {fix}");
        }
    }
}

/// One test's private names.
pub struct TestEnv {
    pub name: String,
    pub topic: String,
    pub group: String,
    pub instance: String,
    pub table: String,
    pub key_prefix: String,
    /// The server the pipeline writes to and the helpers read: MariaDB ([`MYSQL_URL`]), or
    /// Oracle MySQL for [`mysql::env`].
    pub mysql_url: String,
}

impl TestEnv {
    pub fn new(test: &str) -> Self {
        require_services();
        let id = format!(
            "{test}_{}_{}",
            std::process::id(),
            uuid::Uuid::now_v7().as_simple().to_string().get(20..).unwrap_or("x")
        );
        Self {
            topic: format!("t-{}", id.replace('_', "-")),
            group: format!("g-{id}"),
            instance: format!("i-{}", id.replace('_', "-")),
            table: format!("it_{id}"),
            key_prefix: format!("it{}", &id[id.len().saturating_sub(12)..]),
            name: id,
            mysql_url: MYSQL_URL.into(),
        }
    }

    /// A configuration for this test: its names, short timeouts, a 1 s flush interval.
    pub fn config(&self) -> Config {
        let mut c = Config { instance_id: self.instance.clone(), ..Config::default() };
        c.kafka.brokers = KAFKA.into();
        c.kafka.topics = vec![self.topic.clone()];
        c.kafka.group_id = self.group.clone();
        c.kafka.session_timeout = Duration::from_secs(6);
        c.kafka.revocation_timeout = Duration::from_secs(3);
        c.mysql.url = dp_core::SecretUrl::new(&self.mysql_url);
        c.mysql.table = self.table.clone();
        c.redis.key_prefix = self.key_prefix.clone();
        c.buffer.flush_interval = Duration::from_secs(1);
        c.shutdown_timeout = Duration::from_secs(20);
        c
    }

    /// The same configuration as `DP_` environment variables, for the binary.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DP_INSTANCE_ID".into(), self.instance.clone()),
            ("DP_KAFKA__BROKERS".into(), KAFKA.into()),
            ("DP_KAFKA__TOPICS".into(), self.topic.clone()),
            ("DP_KAFKA__GROUP_ID".into(), self.group.clone()),
            ("DP_KAFKA__SESSION_TIMEOUT".into(), "6s".into()),
            ("DP_KAFKA__REVOCATION_TIMEOUT".into(), "3s".into()),
            ("DP_MYSQL__URL".into(), self.mysql_url.clone()),
            ("DP_MYSQL__TABLE".into(), self.table.clone()),
            ("DP_REDIS__KEY_PREFIX".into(), self.key_prefix.clone()),
            ("DP_BUFFER__FLUSH_INTERVAL".into(), "1s".into()),
            ("DP_SHUTDOWN_TIMEOUT".into(), "20s".into()),
            // Many instances run at once: each takes a free port (logged at startup).
            ("DP_HTTP__ADDRESS".into(), "127.0.0.1:0".into()),
        ]
    }

    pub async fn create_topic(&self, partitions: i32) {
        ensure_topic(KAFKA, &self.topic, partitions).await.expect("create topic");
    }

    /// Produces `count` synthetic events and returns their event ids.
    pub async fn produce(&self, count: u64) -> Vec<String> {
        let p = producer(KAFKA).expect("producer");
        let report = produce(
            &p,
            &ProduceOptions {
                brokers: KAFKA.into(),
                topic: self.topic.clone(),
                count,
                rate: None,
                progress: false,
                collect_ids: true,
            },
        )
        .await
        .expect("produce");
        assert_eq!(report.produced, count);
        report.event_ids
    }

    /// Produces `count` events at `rate` per second in the background; the task returns their
    /// event ids.
    pub fn produce_in_background(&self, count: u64, rate: u64) -> tokio::task::JoinHandle<Vec<String>> {
        let opts = ProduceOptions {
            brokers: KAFKA.into(),
            topic: self.topic.clone(),
            count,
            rate: Some(rate),
            progress: false,
            collect_ids: true,
        };
        tokio::spawn(async move {
            let report = produce(&producer(KAFKA).expect("producer"), &opts).await.expect("produce");
            assert_eq!(report.produced, count);
            report.event_ids
        })
    }

    pub async fn mysql(&self) -> mysql_async::Conn {
        let opts =
            mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(&self.mysql_url).expect("url"))
                .prefer_socket(false);
        mysql_async::Conn::new(opts).await.expect("mysql connection")
    }

    /// Rows in the test's table; fails when the table does not exist (a count of a missing
    /// table is no evidence of anything). To poll while the pipeline may still be creating it,
    /// use [`rows_so_far`](Self::rows_so_far).
    pub async fn row_count(&self) -> u64 {
        self.scalar(&format!("SELECT COUNT(*) FROM `{}`", self.table)).await
    }

    /// Rows in the test's table, 0 while the table does not exist yet: for `wait_for` loops
    /// only, never for an assertion.
    pub async fn rows_so_far(&self) -> u64 {
        let sql = format!("SELECT COUNT(*) FROM `{}`", self.table);
        let mut c = self.mysql().await;
        match c.query_first::<u64, _>(&sql).await {
            Ok(v) => v.unwrap_or(0),
            Err(mysql_async::Error::Server(e)) if e.code == 1146 => 0,
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    /// A single number; fails on any error, a missing table included.
    pub async fn scalar(&self, sql: &str) -> u64 {
        let mut c = self.mysql().await;
        match c.query_first::<u64, _>(sql).await {
            Ok(Some(v)) => v,
            Ok(None) => panic!("{sql}: no row"),
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    /// Rows and distinct event ids in the test's table.
    pub async fn rows_and_distinct(&self) -> (u64, u64) {
        let mut c = self.mysql().await;
        let sql = format!("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM `{}`", self.table);
        c.query_first(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")).expect("one row")
    }

    /// Distinct Kafka coordinates (partition, offset) among the rows: equal to the row count when
    /// no message was stored twice, whatever the producer did.
    pub async fn distinct_coordinates(&self) -> u64 {
        self.scalar(&format!("SELECT COUNT(DISTINCT kafka_partition, kafka_offset) FROM `{}`", self.table))
            .await
    }

    /// Dead-letter entries of the test's table (the table must exist).
    pub async fn dead_letters(&self) -> u64 {
        self.scalar(&format!("SELECT COUNT(*) FROM `{}_dead_letter`", self.table)).await
    }

    /// Creates the tables as the pipeline would (`migrate`), then drops the unique key on
    /// `event_id`: only the transaction and the offset watermark stand between a replay and a
    /// duplicate row, so any duplicate shows.
    pub async fn without_unique_key(&self) {
        let out = self.spawn(&["migrate"], &[]).wait().expect("migrate");
        assert!(out.success(), "migrate failed; log: {}", self.log_path().display());
        self.mysql()
            .await
            .query_drop(format!("ALTER TABLE `{}` DROP INDEX `uq_event_id`", self.table))
            .await
            .expect("drop unique key");
    }

    /// Every produced event stored exactly once as a row: rows = distinct = produced, the exact
    /// set of event ids, no dead letter. Returns (rows, distinct) for the test's report.
    pub async fn assert_stored_once(&self, produced: &BTreeSet<String>) -> (u64, u64) {
        let (rows, distinct) = self.rows_and_distinct().await;
        let dead = self.dead_letters().await;
        let n = produced.len() as u64;
        assert_eq!(
            (rows, distinct, dead),
            (n, n, 0),
            "rows, distinct event ids, dead letters for {n} produced"
        );
        assert_eq!(&as_set(self.event_ids().await), produced, "exactly the produced event ids");
        (rows, distinct)
    }

    /// The group's offset watermark (`pipeline_offsets.next_offset`) per partition of the
    /// test's topic; partitions without a row are absent.
    pub async fn watermarks(&self) -> std::collections::BTreeMap<i32, i64> {
        let mut c = self.mysql().await;
        c.exec(
            "SELECT kafka_partition, next_offset FROM pipeline_offsets WHERE consumer_group = ? AND topic = ?",
            (&self.group, &self.topic),
        )
        .await
        .expect("read watermarks")
        .into_iter()
        .collect()
    }

    /// Kafka's committed offset of the test's group per partition `0..partitions` (`None`
    /// where nothing is committed), read from `brokers`.
    pub fn committed(&self, brokers: &str, partitions: i32) -> Vec<Option<i64>> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", &self.group)
            .create()
            .expect("consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
        (0..partitions)
            .map(|p| match committed.find_partition(&self.topic, p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => Some(o),
                _ => None,
            })
            .collect()
    }

    pub async fn event_ids(&self) -> Vec<String> {
        let mut c = self.mysql().await;
        c.query(format!("SELECT event_id FROM `{}`", self.table)).await.expect("select event ids")
    }

    pub async fn redis(&self) -> Client {
        let c = Client::new(fred::prelude::Config::from_url(REDIS_URL).expect("url"), None, None, None);
        c.init().await.expect("redis connection");
        c
    }

    /// Write-ahead keys of this test's instance, in both forms (`<prefix>:buffer:<id>:<uuid>`
    /// and, with `redis.hash_tag`, `<prefix>:buffer:{<id>}:<uuid>`), on the shared Redis.
    pub async fn redis_keys(&self) -> usize {
        buffer_keys(&self.redis().await, &self.key_prefix, &self.instance).await
    }

    /// Every key left under the test's prefix on the shared Redis — write-ahead keys of any
    /// instance in either form, leases, claims, records of cut-short appends, quarantined
    /// records, the instance registry — for the final "nothing left behind" check.
    pub async fn redis_leftovers(&self) -> Vec<String> {
        prefix_keys(&self.redis().await, &self.key_prefix).await
    }

    /// Starts the binary as instance `<instance>-<name>`, logging to its own file.
    pub fn spawn_named(&self, name: &str, args: &[&str], extra: &[(&str, &str)]) -> Instance {
        let id = self.instance_named(name);
        let mut all: Vec<(&str, &str)> = extra.to_vec();
        all.push(("DP_INSTANCE_ID", &id));
        self.spawn_logged(args, &all, &self.log_path_named(name))
    }

    pub fn instance_named(&self, name: &str) -> String {
        format!("{}-{name}", self.instance)
    }

    pub fn log_path_named(&self, name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}.log", self.name))
    }

    /// Write-ahead keys of instance `<instance>-<name>`, in both forms.
    pub async fn redis_keys_named(&self, name: &str) -> usize {
        buffer_keys(&self.redis().await, &self.key_prefix, &self.instance_named(name)).await
    }

    /// Starts the real binary with this test's settings plus `extra` variables.
    pub fn spawn(&self, args: &[&str], extra: &[(&str, &str)]) -> Instance {
        self.spawn_logged(args, extra, &self.log_path())
    }

    fn spawn_logged(&self, args: &[&str], extra: &[(&str, &str)], log: &std::path::Path) -> Instance {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_delivery-pipeline"));
        cmd.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        cmd.env("RUST_LOG", "info");
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        // Appended, so a restarted instance's log follows its predecessor's.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let log2 = log.try_clone().expect("log file");
        cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log2));
        Instance(cmd.spawn().expect("spawn delivery-pipeline"))
    }

    pub fn log_path(&self) -> std::path::PathBuf {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        dir.join(format!("{}.log", self.name))
    }

    pub async fn drop_tables(&self) {
        let mut c = self.mysql().await;
        c.query_drop(format!("DROP TABLE IF EXISTS `{0}`, `{0}_dead_letter`", self.table))
            .await
            .expect("drop");
    }
}

/// Write-ahead keys of `instance` under `prefix`, both forms, on the server `c` talks to.
pub async fn buffer_keys(c: &Client, prefix: &str, instance: &str) -> usize {
    let plain = scan(c, &format!("{prefix}:buffer:{instance}:*")).await;
    let tagged = scan(c, &format!("{prefix}:buffer:{{{instance}}}:*")).await;
    plain.len() + tagged.len()
}

/// Every key under `prefix` on the server `c` talks to.
pub async fn prefix_keys(c: &Client, prefix: &str) -> Vec<String> {
    scan(c, &format!("{prefix}:*")).await
}

/// Keys matching a `SCAN` pattern (`[`, `]`, `{`, `}` are taken literally).
async fn scan(c: &Client, pattern: &str) -> Vec<String> {
    use futures::TryStreamExt as _;
    let escaped: String = pattern
        .chars()
        .flat_map(|ch| if matches!(ch, '[' | ']') { vec!['\\', ch] } else { vec![ch] })
        .collect();
    let keys: Vec<Key> = c.scan_buffered(escaped, Some(1000), None).try_collect().await.expect("scan");
    keys.iter().map(|k| String::from_utf8_lossy(k.as_bytes()).into_owned()).collect()
}

/// The text of a log file; fails when it cannot be read (a check on a log that is not there
/// proves nothing).
pub fn read_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read log {}: {e}", path.display()))
}

/// A process of the binary under test (a `Child`): SIGKILLed when dropped while still running,
/// so a test that fails midway leaves nothing behind to consume, write and load the machine.
pub struct Instance(pub Child);

impl std::ops::Deref for Instance {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Instance {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            sigkill(&mut self.0);
        }
    }
}

/// The partitions the instance logging to `log` holds now, from its assignment and revocation
/// lines since its last start (eager assignments revoke everything first, cooperative ones
/// add and remove increments: applying the lines in order gives the holding either way).
pub fn owned_partitions(log: &std::path::Path) -> BTreeSet<i32> {
    let text = read_log(log);
    let mut owned = BTreeSet::new();
    for line in text.lines() {
        if line.contains("delivery-pipeline started") {
            owned.clear();
        } else if line.contains("kafka partitions assigned") {
            owned.extend(partitions_in(line));
        } else if line.contains("kafka partitions revoked") {
            for p in partitions_in(line) {
                owned.remove(&p);
            }
        }
    }
    owned
}

/// The counters an instance logged when it stopped cleanly (the last "delivery-pipeline stopped
/// cleanly" line of its log: `stats=StatsSnapshot { consumed: 3, inserted: 3, … }`), by name.
/// Fails when there is no such line.
pub fn final_stats(log: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    let text = read_log(log);
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("delivery-pipeline stopped cleanly"))
        .unwrap_or_else(|| panic!("{} has no clean stop", log.display()));
    let inner = line
        .split_once("StatsSnapshot {")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(inner, _)| inner)
        .unwrap_or_else(|| panic!("no counters in {line}"));
    inner
        .split(',')
        .filter_map(|kv| kv.split_once(':'))
        .filter_map(|(k, v)| Some((k.trim().to_owned(), v.trim().parse().ok()?)))
        .collect()
}

/// The partition numbers of a line's `partitions=[("topic", 0), ("topic", 1)]` field.
pub fn partitions_in(line: &str) -> Vec<i32> {
    let Some(list) =
        line.split_once("partitions=[").and_then(|(_, rest)| rest.split_once(']')).map(|(l, _)| l)
    else {
        return Vec::new();
    };
    list.split("\", ")
        .skip(1)
        .filter_map(|s| s.split(')').next().and_then(|p| p.trim().parse().ok()))
        .collect()
}

/// Whether the sets are pairwise disjoint and together hold partitions `0..partitions`: a
/// group that has settled.
pub fn disjoint_cover(sets: &[BTreeSet<i32>], partitions: i32) -> bool {
    let total: usize = sets.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
    total == union.len() && union == (0..partitions).collect()
}

/// Polls `probe` every 200 ms until it returns true; panics with `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !probe().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many times `needle` appears in the log at `path`; fails when the log cannot be read.
pub fn log_count(path: &std::path::Path, needle: &str) -> usize {
    read_log(path).matches(needle).count()
}

/// Sends SIGKILL (nothing runs after it: no drain, no commit, no cleanup).
pub fn sigkill(child: &mut Child) {
    child.kill().expect("SIGKILL");
    let _ = child.wait();
}

/// Sends SIGTERM and waits up to `limit` for the exit status.
pub fn sigterm(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let ok = Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
    assert!(ok.success());
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(start.elapsed() < limit, "process did not exit within {limit:?} of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn as_set(v: Vec<String>) -> BTreeSet<String> {
    v.into_iter().collect()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A redis-server of the test's own (never the shared one): without persistence, or with an
/// append-only file synced on every write.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
    /// Where the AOF lives, for a persistent server.
    dir: Option<tempfile::TempDir>,
}

impl OwnRedis {
    pub fn start(port: u16) -> Self {
        let mut r = Self { port, child: None, dir: None };
        r.restart();
        r
    }

    /// A server that persists every write before answering (`appendonly yes`, `appendfsync
    /// always`), as `commit_policy = "after_buffer"` requires; a restart reloads its AOF.
    pub fn start_persistent(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("redis data directory");
        let mut r = Self { port, child: None, dir: Some(dir) };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let mut args: Vec<String> =
            ["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""].map(String::from).into();
        match &self.dir {
            Some(dir) => args.extend(
                ["--appendonly", "yes", "--appendfsync", "always", "--dir", &dir.path().to_string_lossy()]
                    .map(String::from),
            ),
            None => args.extend(["--appendonly", "no"].map(String::from)),
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "own redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the server is gone, and with it everything it holds unless it persists.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigkill(&mut c);
        }
    }

    pub async fn client(&self) -> Client {
        let c = Client::new(fred::prelude::Config::from_url(&self.url()).expect("url"), None, None, None);
        c.init().await.expect("own redis connection");
        c
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy of the test's own in front of a real service (the sink conformance kit's):
/// `cut()` resets every connection through it and refuses new ones until `restore()`.
pub struct Proxy(dp_sink_conformance::Proxy);

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        Self(dp_sink_conformance::Proxy::start(target).await.expect("proxy listens on 127.0.0.1"))
    }
}

impl std::ops::Deref for Proxy {
    type Target = dp_sink_conformance::Proxy;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A tansu broker of the test's own, reached only through `proxy` (it advertises the proxy's
/// port), so cutting the proxy makes the broker unreachable for every client.
pub struct OwnKafka {
    child: std::process::Child,
}

impl OwnKafka {
    pub fn start(listen: u16, proxy: &Proxy) -> Self {
        // Where `scripts/kafka.sh start` installs it (TEST_KAFKA_DIR overrides, as for the script).
        let dir = std::env::var("TEST_KAFKA_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/kafka").to_owned());
        let bin = format!("{dir}/tansu");
        let child = std::process::Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{listen}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{}", proxy.port),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu must be installed by `scripts/kafka.sh start`");
        let addr = format!("127.0.0.1:{listen}").parse().expect("addr");
        let started = Instant::now();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "own tansu did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child }
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        sigkill(&mut self.child);
    }
}

/// Messages in partitions `0..partitions` of `topic`, counted by reading them all from `brokers`
/// (the test broker's partition watermarks are not exact enough to count with).
pub fn topic_messages(brokers: &str, topic: &str, partitions: i32) -> u64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::KafkaError;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("count-{}", uuid::Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let (mut count, mut done) = (0u64, BTreeSet::new());
    let started = Instant::now();
    while done.len() < partitions as usize {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "counting the messages of {topic} took over 60 s"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(_)) => count += 1,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) => panic!("counting the messages of {topic}: {e}"),
            None => {}
        }
    }
    count
}

/// A broker address nothing listens on: a Kafka that cannot be reached.
pub fn unreachable_kafka() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// The address the instance logging to `log` serves HTTP on (from its startup line).
pub fn http_address(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.contains("http endpoint listening"))?;
    let at = line.find("address=")? + "address=".len();
    Some(line[at..].split_whitespace().next()?.to_owned())
}

/// A plain HTTP/1.1 GET: the status code and the body.
pub fn http_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_request(address, "GET", path, "")
}

/// A plain HTTP/1.1 POST without a body, with a bearer token when given: the status code and
/// the body.
pub fn http_post(address: &str, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    http_request(address, "POST", path, &format!("{auth}Content-Length: 0\r\n"))
}

fn http_request(address: &str, method: &str, path: &str, headers: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(address)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{headers}Connection: close\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// Sum of every sample of metric `name` in a Prometheus text exposition.
pub fn metric_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Builds the pipeline `config` describes and runs it in this process until it has delivered
/// `total` records (within 120 s), then stops it cleanly and returns its summary.
pub async fn run_until_delivered(config: &Config, total: u64) -> dp_pipeline::RunSummary {
    let pipeline = dp_assembly::build(config).await.expect("build");
    let stats = pipeline.stats();
    pipeline
        .run(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while stats.snapshot().delivered() < total {
                assert!(Instant::now() < deadline, "no progress: {:?}", stats.snapshot());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("clean run")
}
