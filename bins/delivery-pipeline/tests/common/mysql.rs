//! Oracle MySQL for the tests that run the pipeline against it (`mysql_server.rs`, and the MySQL
//! test of `tls.rs`): the shared server `scripts/mysql.sh start` runs on 127.0.0.1:3307
//! (`TEST_MYSQL_URL` names another), and servers of a test's own started from the same
//! installation (`scripts/mysql.sh mysqld`). MariaDB on 3306 stays every other test's store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use super::{TestEnv, free_port, sigkill};

/// The variable naming the shared MySQL server's URL (no `DP_` prefix: the binary reads those).
pub const URL_VAR: &str = "TEST_MYSQL_URL";
/// Where `scripts/mysql.sh start` runs it (`scripts/mysql.sh url` prints it).
pub const DEFAULT_URL: &str = "mysql://root@127.0.0.1:3307/test";

/// The shared MySQL server's URL.
pub fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// The test's names, with the pipeline and every helper of [`TestEnv`] on the shared MySQL
/// server. Fails, naming `scripts/mysql.sh start`, when it does not answer or is not MySQL.
pub async fn env(test: &str) -> TestEnv {
    let mut env = TestEnv::new(test);
    env.mysql_url = url();
    let opts = mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(&env.mysql_url).expect("url"))
        .prefer_socket(false);
    let mut conn = mysql_async::Conn::new(opts).await.unwrap_or_else(|e| {
        panic!("MySQL must answer on {} ({URL_VAR}): {e}; run `scripts/mysql.sh start`", env.mysql_url)
    });
    let version: String = conn.query_first("SELECT VERSION()").await.expect("version").expect("a version");
    assert!(!version.contains("MariaDB"), "{} must be Oracle MySQL, not {version}", env.mysql_url);
    env
}

/// The project's script, which knows where and how MySQL is installed.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mysql.sh")
}

/// A MySQL server of the test's own: a fresh data directory (root without a password), on a
/// free port of 127.0.0.1, with `extra` arguments (TLS files, `--require-secure-transport`).
/// Killed when dropped.
pub struct OwnMysql {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl OwnMysql {
    pub fn start(extra: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let data = path("data");
        let init = Command::new(script())
            .arg("mysqld")
            .arg(format!("--datadir={data}"))
            .arg(format!("--log-error={}", path("initialize.log")))
            .arg("--initialize-insecure")
            .output()
            .expect("run scripts/mysql.sh");
        assert!(
            init.status.success(),
            "initializing a MySQL data directory failed (is it installed? run `scripts/mysql.sh start`): {}{}",
            String::from_utf8_lossy(&init.stderr),
            std::fs::read_to_string(path("initialize.log")).unwrap_or_default()
        );
        let port = free_port();
        let log = path("error.log");
        let child = Command::new(script())
            .arg("mysqld")
            .arg(format!("--datadir={data}"))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", path("sock")))
            .arg(format!("--pid-file={}", path("pid")))
            .arg(format!("--log-error={log}"))
            .arg(format!("--tmpdir={}", dir.path().display()))
            .arg(format!("--secure-file-priv={}", dir.path().display()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run scripts/mysql.sh mysqld");
        let mut own = Self { child, port, dir };
        let addr = format!("127.0.0.1:{port}").parse().expect("addr");
        let started = Instant::now();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = own.child.try_wait() {
                panic!("mysqld exited with {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "mysqld did not listen on {port}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        own
    }

    /// `mysql://<user>@127.0.0.1:<port>/<db>`; `user` may carry `:password`.
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("mysql://{user}@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for OwnMysql {
    fn drop(&mut self) {
        sigkill(&mut self.child);
    }
}
