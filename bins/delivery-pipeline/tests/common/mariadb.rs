//! A MariaDB server of a test's own, for what the shared one on 3306 must not be reconfigured
//! for (TLS only, another global time zone): a fresh data directory (root without a password,
//! database `test`) on a free port of 127.0.0.1, with extra `mariadbd` arguments. Killed when
//! dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, sigkill};

pub struct OwnMariadb {
    child: Child,
    pub port: u16,
    /// Its data directory and log (`error.log`); a test may put files it reads (certificates)
    /// here before starting it.
    pub dir: tempfile::TempDir,
}

impl OwnMariadb {
    /// Initializes a data directory in `dir` and starts `mariadbd` on it with `extra`.
    pub fn start(dir: tempfile::TempDir, extra: &[String]) -> Self {
        let data = dir.path().join("data");
        let install = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
            .output()
            .expect("mariadb-install-db must be installed (apt-get install mariadb-server)");
        assert!(install.status.success(), "mariadb-install-db: {}", String::from_utf8_lossy(&install.stderr));
        let port = free_port();
        let bin = if Path::new("/usr/sbin/mariadbd").exists() { "/usr/sbin/mariadbd" } else { "mariadbd" };
        let log = dir.path().join("error.log");
        let child = Command::new(bin)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd must be installed");
        let mut own = Self { child, port, dir };
        let addr = format!("127.0.0.1:{port}").parse().expect("addr");
        let started = Instant::now();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = own.child.try_wait() {
                panic!(
                    "mariadbd exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "mariadbd did not listen on {port}: {}",
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

impl Drop for OwnMariadb {
    fn drop(&mut self) {
        sigkill(&mut self.child);
    }
}
