//! A tansu broker of the test's own that keeps its data across a SIGKILL: S3 storage served by
//! a moto server of the test's own (`moto[server]`, pinned in `tests/support/requirements.txt`),
//! since the prebuilt tansu has no PostgreSQL or SQLite engine and its memory engine forgets
//! everything with the process.
//!
//! What tansu keeps in the bucket, read back by a restarted broker: topics, record batches,
//! partition high watermarks, the committed offsets of each group (one object per partition),
//! the groups' state and idempotent producers' sequences. Nothing in the pipeline's guarantee
//! may rest on the group state, though: every member's session has long expired when the broker
//! comes back, so the group re-forms.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::sigkill;

/// How to install what is missing.
const FIX_MOTO: &str = "install the pinned moto server: `python3 -m pip install -r bins/delivery-pipeline/tests/support/requirements.txt` (scripts/test.sh does)";
const FIX_TANSU: &str =
    "run `scripts/kafka.sh start` (it installs tansu into target/kafka; TEST_KAFKA_DIR overrides)";
/// How long a starting moto or tansu may take on a loaded 2-core machine.
const START_LIMIT: Duration = Duration::from_secs(60);
const BUCKET: &str = "tansu";

/// A tansu broker on S3 storage in a moto server, both the test's own, both SIGKILLed on drop.
pub struct DurableKafka {
    /// The broker's port on 127.0.0.1 (the same across restarts).
    pub port: u16,
    s3_port: u16,
    moto: Child,
    tansu: Option<Child>,
    bin: PathBuf,
    log: PathBuf,
}

impl DurableKafka {
    /// Starts moto, creates the bucket, starts tansu on it. `name` names the log files
    /// (`<CARGO_TARGET_TMPDIR>/<name>-moto.log`, `…-tansu.log`, appended across restarts).
    pub fn start(name: &str) -> Self {
        // Where `scripts/kafka.sh start` installs it (TEST_KAFKA_DIR overrides, as for the script).
        let dir = std::env::var("TEST_KAFKA_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/kafka").to_owned());
        let bin = PathBuf::from(format!("{dir}/tansu"));
        assert!(bin.is_file(), "tansu is not installed at {}: {FIX_TANSU}", bin.display());
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let moto_log = tmp.join(format!("{name}-moto.log"));
        let log = tmp.join(format!("{name}-tansu.log"));
        let s3_port = stable_port();
        let moto = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &s3_port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file(&moto_log))
            .stderr(log_file(&moto_log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 for the moto server ({e}): {FIX_MOTO}"));
        let mut kafka = Self { port: stable_port(), s3_port, moto, tansu: None, bin, log: log.clone() };
        let started = Instant::now();
        while !answers(s3_port) {
            if let Ok(Some(status)) = kafka.moto.try_wait() {
                panic!(
                    "the moto server exited ({status}) before listening on {s3_port}: {FIX_MOTO}\n{}",
                    tail(&moto_log)
                );
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "the moto server did not listen on {s3_port} within {START_LIMIT:?}\n{}",
                tail(&moto_log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        create_bucket(s3_port);
        kafka.restart();
        kafka
    }

    /// The bootstrap servers to give clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log (every start appends to it).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGKILL: no shutdown, no flush; what is in the bucket is what a restart finds.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.tansu.take() {
            sigkill(&mut child);
        }
    }

    /// Starts the broker (again) on the same port and storage and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{}", self.port),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{}", self.port),
                "--storage-engine",
                &format!("s3://{BUCKET}/"),
            ])
            // tansu's S3 client (object_store) reads these; the credentials are moto's dummies.
            .env("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.s3_port))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_DEFAULT_REGION", "eu-west-2")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .stdin(Stdio::null())
            .stdout(log_file(&self.log))
            .stderr(log_file(&self.log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} ({e}): {FIX_TANSU}", self.bin.display()));
        let started = Instant::now();
        while !answers(self.port) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("tansu exited ({status}) before listening on {}\n{}", self.port, tail(&self.log));
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "tansu did not listen on {} within {START_LIMIT:?}\n{}",
                self.port,
                tail(&self.log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.tansu = Some(child);
    }

    /// Whether the broker process runs (it may have exited on its own).
    pub fn running(&mut self) -> bool {
        self.tansu.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for DurableKafka {
    fn drop(&mut self) {
        self.kill();
        sigkill(&mut self.moto);
    }
}

/// A free port below the kernel's ephemeral range. The broker must get the same port back
/// after a restart; a port in the ephemeral range can meanwhile be taken by a client's own end
/// of a connection (a client reconnecting to a port nobody listens on can even connect to
/// itself), which would keep the broker from listening there again.
fn stable_port() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let (low, span) = (20_000u64, 12_000u64);
    // Spread over the range, so tests starting brokers at once rarely try the same port.
    let start = (u64::from(std::process::id()) ^ nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % span;
    (0..span)
        .map(|i| (low + (start + i * 7_919) % span) as u16)
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("no free port in 20000-31999")
}

fn answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Creates the bucket with a plain HTTP `PUT /<bucket>` (moto needs no signature).
fn create_bucket(port: u16) {
    let attempt = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        Ok(response)
    };
    match attempt() {
        Ok(r) if r.split_whitespace().nth(1) == Some("200") => {}
        Ok(r) => panic!("moto refused to create bucket {BUCKET}: {}", r.lines().next().unwrap_or("")),
        Err(e) => panic!("cannot create bucket {BUCKET} on moto at 127.0.0.1:{port}: {e}"),
    }
}

fn log_file(path: &Path) -> Stdio {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log {}: {e}", path.display()));
    Stdio::from(f)
}

/// The last lines of a log, for a failure message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!("last lines of {}:\n{}", path.display(), lines[lines.len().saturating_sub(20)..].join("\n"))
}
