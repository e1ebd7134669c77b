//! redis-server processes of a test's own, never the shared Redis: a plain server, a Redis Cluster of
//! primaries and a primary watched by Sentinels, on free ports of 127.0.0.1 with their files in
//! a temporary directory. Every process is killed (SIGKILL) when its owner is dropped.
//!
//! Enabled by the `test-support` feature; used by this crate's integration tests and the
//! binary's. Needs `redis-server` and `redis-cli` on the `PATH` (Debian: `redis-server`, which
//! pulls in `redis-tools`); a test that finds them missing panics saying so.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One redis-server process, restartable on the same port and directory.
pub struct RedisNode {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisNode {
    /// Starts `redis-server` on `port` with its files in `dir` (created), plus `extra` options.
    fn start(port: u16, dir: &Path, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dir).expect("node directory");
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--save".into(),
            String::new(),
            "--logfile".into(),
            dir.join("redis.log").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut node = Self { port, dir: dir.to_owned(), args, child: None };
        node.restart();
        node
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its working directory (AOF, cluster config, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILL: nothing is flushed; what the AOF holds is what a restart reloads.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again with the same port, directory and options (a killed node
    /// reloads its AOF and, in a cluster, its cluster configuration), and waits until it
    /// accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server must be installed (apt-get install redis-server): {e}"));
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                panic!("redis-server on {} exited with {status}; see {}", self.port, self.log().display());
            }
            assert!(start.elapsed() < Duration::from_secs(20), "redis-server did not start on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// How many keys of this node match `pattern` (`redis-cli --scan`, so never `KEYS`).
    pub fn count_keys(&self, pattern: &str) -> usize {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--scan", "--pattern", pattern])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("redis-cli must be installed (apt-get install redis-tools): {e}"));
        assert!(
            out.status.success(),
            "redis-cli --scan on {} failed: {}",
            self.port,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).count()
    }

    /// Runs `redis-cli -p <port> <args>` against this node and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(&[&["-p", &self.port.to_string()], args].concat())
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("redis-cli must be installed (apt-get install redis-tools): {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

/// A free port `p` of 127.0.0.1 whose cluster bus port `p + 10000` is free too.
pub fn free_cluster_port() -> u16 {
    for _ in 0..1000 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else { continue };
        let Ok(port) = l.local_addr().map(|a| a.port()) else { continue };
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair (p, p + 10000) on 127.0.0.1");
}

/// One plain redis-server (no persistence) of a test's own, for settings the shared Redis must
/// not be given (ACL users, say).
pub struct RedisServer {
    node: RedisNode,
    // Dropped after the node, so the process dies first.
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts it on a free port and waits until it answers.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("dp-redis").tempdir().expect("temp dir");
        let node = RedisNode::start(free_cluster_port(), dir.path(), &["--appendonly", "no"]);
        Self { node, _dir: dir }
    }

    /// The server.
    pub fn node(&self) -> &RedisNode {
        &self.node
    }
}

/// A Redis Cluster of primaries only (no replicas) on 127.0.0.1, AOF on with
/// `appendfsync always`, created with `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<RedisNode>,
    // Dropped after the nodes (fields drop in order), so the processes die first.
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `primaries` (at least 3, what `redis-cli --cluster create` accepts) cluster-enabled
    /// redis-servers, assigns the 16384 slots evenly and waits for `cluster_state:ok` on each.
    pub fn start(primaries: usize) -> Self {
        assert!(primaries >= 3, "a Redis Cluster needs at least 3 primaries");
        let dir = tempfile::Builder::new().prefix("dp-redis-cluster").tempdir().expect("temp dir");
        let nodes: Vec<RedisNode> = (0..primaries)
            .map(|_| {
                let port = free_cluster_port();
                RedisNode::start(
                    port,
                    &dir.path().join(port.to_string()),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(RedisNode::address).collect();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = redis_cli(&args);
        assert!(out.contains("All 16384 slots covered"), "redis-cli --cluster create failed:\n{out}");
        let cluster = Self { nodes, _dir: dir };
        cluster.wait_until_ok(Duration::from_secs(30));
        cluster
    }

    /// The nodes, in the order they were started.
    pub fn nodes(&self) -> &[RedisNode] {
        &self.nodes
    }

    /// One node, to kill and restart.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisNode {
        &mut self.nodes[i]
    }

    /// `redis://` URL of the first node: a seed for `redis.mode = "cluster"`.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// `host:port` of every node after the first: the rest of the seeds (`redis.nodes`).
    pub fn other_seeds(&self) -> Vec<String> {
        self.nodes[1..].iter().map(RedisNode::address).collect()
    }

    /// How many keys match `pattern`, summed over the nodes.
    pub fn count_keys(&self, pattern: &str) -> usize {
        self.nodes.iter().map(|n| n.count_keys(pattern)).sum()
    }

    /// Waits until every node reports `cluster_state:ok` and knows all the others.
    pub fn wait_until_ok(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let ok = self.nodes.iter().all(|n| {
                n.cli(&["cluster", "info"]).contains("cluster_state:ok")
                    && n.cli(&["cluster", "nodes"]).lines().filter(|l| l.contains("connected")).count()
                        == self.nodes.len()
            });
            if ok {
                return;
            }
            assert!(start.elapsed() < limit, "the cluster did not reach cluster_state:ok within {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A standalone primary (AOF on, `appendfsync always`) watched by Sentinels under the service
/// name [`RedisSentinels::SERVICE`].
pub struct RedisSentinels {
    primary: RedisNode,
    sentinels: Vec<RedisNode>,
    _dir: tempfile::TempDir,
}

impl RedisSentinels {
    /// The name the Sentinels monitor the primary under.
    pub const SERVICE: &'static str = "dp-primary";

    /// Starts the primary and `sentinels` Sentinels (quorum 1), and waits until each names the
    /// primary.
    pub fn start(sentinels: usize) -> Self {
        assert!(sentinels >= 1);
        let dir = tempfile::Builder::new().prefix("dp-redis-sentinel").tempdir().expect("temp dir");
        let port = free_cluster_port();
        let primary = RedisNode::start(
            port,
            &dir.path().join("primary"),
            &["--appendonly", "yes", "--appendfsync", "always"],
        );
        let sentinels: Vec<RedisNode> = (0..sentinels)
            .map(|i| {
                let sentinel_port = free_cluster_port();
                let sdir = dir.path().join(format!("sentinel-{i}"));
                std::fs::create_dir_all(&sdir).expect("sentinel directory");
                // A Sentinel rewrites its configuration file: it must be writable and its own.
                let conf = sdir.join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "sentinel monitor {service} 127.0.0.1 {port} 1\n\
                         sentinel down-after-milliseconds {service} 5000\n",
                        service = Self::SERVICE
                    ),
                )
                .expect("sentinel.conf");
                let conf = conf.display().to_string();
                let mut node = RedisNode {
                    port: sentinel_port,
                    dir: sdir.clone(),
                    args: vec![
                        conf,
                        "--sentinel".into(),
                        "--port".into(),
                        sentinel_port.to_string(),
                        "--bind".into(),
                        "127.0.0.1".into(),
                        "--dir".into(),
                        sdir.display().to_string(),
                        "--logfile".into(),
                        sdir.join("redis.log").display().to_string(),
                    ],
                    child: None,
                };
                node.restart();
                node
            })
            .collect();
        let this = Self { primary, sentinels, _dir: dir };
        let start = Instant::now();
        for s in &this.sentinels {
            while !s.cli(&["sentinel", "get-master-addr-by-name", Self::SERVICE]).contains(&port.to_string())
            {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "sentinel {} does not name the primary",
                    s.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        this
    }

    /// The primary the Sentinels watch.
    pub fn primary(&self) -> &RedisNode {
        &self.primary
    }

    /// The Sentinels.
    pub fn sentinels(&self) -> &[RedisNode] {
        &self.sentinels
    }

    /// `redis://` URL of the first Sentinel (`redis.url` with `redis.mode = "sentinel"`).
    pub fn url(&self) -> String {
        self.sentinels[0].url()
    }

    /// `host:port` of every Sentinel after the first (`redis.nodes`).
    pub fn other_sentinels(&self) -> Vec<String> {
        self.sentinels[1..].iter().map(RedisNode::address).collect()
    }
}
