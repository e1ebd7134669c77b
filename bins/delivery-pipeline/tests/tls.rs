//! TLS and credentials against servers of the test's own, with certificates the test makes
//! with the `openssl` command: a Redis, a MariaDB and an Oracle MySQL that speak only TLS, and
//! a Kafka broker (tansu) behind a TLS-terminating `socat`. Each is checked with the right CA
//! (it connects, and the data path works), a wrong CA and an expired certificate (startup
//! fails, naming the service, the redacted URL and what is wrong with the certificate), and
//! client certificates where the server asks for them. The last test runs the binary with
//! secrets in URLs, files and variables against servers that refuse them, and greps everything
//! it printed.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TestEnv, free_port, sigkill, wait_for};
use dp_buffer_redis::{RedisBuffer, RedisBufferConfig};
use dp_core::{Buffer, Record, SecretUrl, Sink, TlsConfig, TlsVerify};
use dp_sink_mysql::{MysqlSink, MysqlSinkConfig};
use dp_source_kafka::{KafkaSource, KafkaSourceConfig};
use mysql_async::prelude::Queryable;

/// A private PKI: a CA, a server certificate for `localhost` and `127.0.0.1`, the same key
/// certified for a name that is not this host, an expired one, a client certificate, and a
/// second CA that signed none of them.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn generate() -> Self {
        let pki = Self { dir: tempfile::tempdir().expect("tmp") };
        let ca_ext = [
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        for (ca, cn) in [("ca", "dp test CA"), ("other-ca", "dp other CA")] {
            let (key, pem, subj) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN={cn}"));
            let mut args = vec!["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
            args.extend(["-nodes", "-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
            args.extend(ca_ext);
            pki.openssl(&args);
        }
        for (name, cn) in [("server", "localhost"), ("client", "app")] {
            let (key, csr, subj) = (format!("{name}.key"), format!("{name}.csr"), format!("/CN={cn}"));
            pki.openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subj,
            ]);
        }
        let ext = |name: &str, lines: &str| {
            std::fs::write(pki.path(name), format!("basicConstraints=CA:FALSE\n{lines}\n"))
                .expect("ext file");
        };
        ext(
            "server.ext",
            "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1",
        );
        ext(
            "elsewhere.ext",
            "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:db.elsewhere.example",
        );
        ext("client.ext", "keyUsage=digitalSignature\nextendedKeyUsage=clientAuth");
        for (out, csr, ext, days) in [
            ("server.pem", "server.csr", "server.ext", "2"),
            ("elsewhere.pem", "server.csr", "elsewhere.ext", "2"),
            // Valid until a day before it was issued: expired from the start.
            ("expired.pem", "server.csr", "server.ext", "-1"),
            ("client.pem", "client.csr", "client.ext", "2"),
        ] {
            pki.openssl(&[
                "x509",
                "-req",
                "-in",
                csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                out,
                "-days",
                days,
                "-extfile",
                ext,
            ]);
        }
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("the openssl command must be installed (apt-get install openssl)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// TLS on, trusting `ca` (a file of this PKI).
    fn tls(&self, ca: &str) -> TlsConfig {
        TlsConfig { enabled: true, ca_file: Some(self.path(ca)), ..TlsConfig::default() }
    }

    fn with_client_cert(&self, mut tls: TlsConfig) -> TlsConfig {
        tls.cert_file = Some(self.path("client.pem"));
        tls.key_file = Some(self.path("client.key"));
        tls
    }
}

fn wait_port(port: u16, what: &str) {
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process of the test's own, killed when dropped.
struct Own(Child);

impl Drop for Own {
    fn drop(&mut self) {
        sigkill(&mut self.0);
    }
}

/// A redis-server that speaks only TLS, with `cert` and its key, asking clients for a
/// certificate as `auth_clients` says (`no`, `optional`, `yes`).
fn tls_redis(pki: &Pki, cert: &str, auth_clients: &str, requirepass: Option<&str>) -> (Own, u16) {
    let port = free_port();
    let (cert, key, ca) = (pki.path(cert), pki.path("server.key"), pki.path("ca.pem"));
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .args(["--tls-auth-clients", auth_clients])
    .arg("--tls-cert-file")
    .arg(&cert)
    .arg("--tls-key-file")
    .arg(&key)
    .arg("--tls-ca-cert-file")
    .arg(&ca);
    if let Some(pw) = requirepass {
        cmd.args(["--requirepass", pw]);
    }
    let child =
        cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("redis-server must be installed");
    let own = Own(child);
    wait_port(port, "redis-server (TLS)");
    (own, port)
}

fn redis_config(url: String, tls: TlsConfig) -> RedisBufferConfig {
    RedisBufferConfig {
        url: SecretUrl::new(url),
        tls,
        key_prefix: "tls".into(),
        connect_timeout: Duration::from_secs(5),
        ..RedisBufferConfig::default()
    }
}

async fn redis_connect_error(config: &RedisBufferConfig) -> String {
    match RedisBuffer::connect(config, "tls-test").await {
        Ok(_) => panic!("connected to {} although it must fail", config.url),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_the_right_ca_buffers_records() {
    let pki = Pki::generate();
    let (_redis, port) = tls_redis(&pki, "server.pem", "no", None);
    // rediss:// turns TLS on; the CA is the test's own, the name checked is 127.0.0.1.
    let config =
        redis_config(format!("rediss://127.0.0.1:{port}"), TlsConfig { enabled: false, ..pki.tls("ca.pem") });
    config.validate().expect("valid");
    let buffer =
        RedisBuffer::connect(&config, "tls-test").await.expect("connects over TLS with the right CA");
    let record = Record::new("t", 0, 7, Some(br#"{"event_id":"e1"}"#.to_vec()));
    let keys = buffer.append(std::slice::from_ref(&record)).await.expect("append over TLS");
    let restored = buffer.restore().await.expect("restore over TLS");
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0].1, record);
    buffer.remove(&keys).await.expect("remove");
    buffer.close().await.expect("close");

    // The same with redis:// and redis.tls.enabled, and with `verify = "ca"` by a name the
    // certificate does not hold.
    let config = redis_config(format!("redis://127.0.0.1:{port}"), pki.tls("ca.pem"));
    RedisBuffer::connect(&config, "tls-test").await.expect("redis.tls.enabled").close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_an_untrusted_or_expired_certificate_fails_clearly() {
    let pki = Pki::generate();
    let (_redis, port) = tls_redis(&pki, "server.pem", "no", Some("tls-url-secret"));
    let url = format!("rediss://:tls-url-secret@127.0.0.1:{port}");
    let e = redis_connect_error(&redis_config(url.clone(), pki.tls("other-ca.pem"))).await;
    assert!(
        e.starts_with(&format!("redis.url: cannot connect to redis at rediss://:***@127.0.0.1:{port}")),
        "{e}"
    );
    assert!(e.contains("certificate is not trusted") && e.contains("redis.tls.ca_file"), "{e}");
    assert!(!e.contains("tls-url-secret"), "{e}");
    // No CA given: the built-in roots do not know the test's CA either.
    let e =
        redis_connect_error(&redis_config(url, TlsConfig { enabled: true, ..TlsConfig::default() })).await;
    assert!(e.contains("certificate is not trusted"), "{e}");

    let (_expired, port) = tls_redis(&pki, "expired.pem", "no", None);
    let e = redis_connect_error(&redis_config(format!("rediss://127.0.0.1:{port}"), pki.tls("ca.pem"))).await;
    assert!(e.starts_with("redis.url: cannot connect to redis at rediss://127.0.0.1"), "{e}");
    assert!(e.contains("certificate has expired"), "{e}");

    let (_elsewhere, port) = tls_redis(&pki, "elsewhere.pem", "no", None);
    let e = redis_connect_error(&redis_config(format!("rediss://127.0.0.1:{port}"), pki.tls("ca.pem"))).await;
    assert!(e.contains("does not name the host"), "{e}");
    let lowered = TlsConfig { verify: TlsVerify::Ca, ..pki.tls("ca.pem") };
    let buffer =
        RedisBuffer::connect(&redis_config(format!("rediss://127.0.0.1:{port}"), lowered), "tls-test")
            .await
            .expect("verify = \"ca\" accepts a trusted certificate for another name");
    buffer.close().await.expect("close");

    // The binary: startup fails with one line naming redis, the redacted URL and the cause.
    let (_redis, port) = tls_redis(&pki, "server.pem", "no", None);
    let out = run_binary(
        &["run"],
        &[
            ("DP_REDIS__URL", &format!("rediss://:binary-secret@127.0.0.1:{port}")),
            ("DP_REDIS__TLS__CA_FILE", &pki.path("other-ca.pem").to_string_lossy()),
            ("DP_REDIS__CONNECT_TIMEOUT", "5s"),
        ],
    );
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    // At debug level the client may still log after the process's final line; that line is
    // the one `error:` line.
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line:\n{text}");
    let last = errors[0].to_owned();
    assert!(
        last.starts_with(&format!(
            "error: redis.url: cannot connect to redis at rediss://:***@127.0.0.1:{port}"
        )),
        "{text}"
    );
    assert!(last.contains("not trusted"), "{text}");
    assert!(!text.contains("binary-secret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_client_certificates_and_password_files() {
    let pki = Pki::generate();
    let (_redis, port) = tls_redis(&pki, "server.pem", "yes", Some("from-a-file"));
    let password = pki.path("redis-password");
    std::fs::write(&password, "from-a-file\n").expect("write");
    let url = format!("rediss://127.0.0.1:{port}");
    let mut config = redis_config(url.clone(), pki.tls("ca.pem"));
    config.password_file = Some(password.clone());
    let e = redis_connect_error(&config).await;
    assert!(e.starts_with("redis.url: cannot connect to redis at rediss://127.0.0.1"), "{e}");
    config.tls = pki.with_client_cert(pki.tls("ca.pem"));
    let buffer =
        RedisBuffer::connect(&config, "tls-test").await.expect("client certificate and password file");
    buffer.close().await.expect("close");
    config.password_file = None;
    let e = redis_connect_error(&config).await;
    assert!(e.contains("NOAUTH") || e.to_lowercase().contains("auth"), "no password, no entry: {e}");
}

/// A MariaDB of the test's own: a fresh data directory, TLS with the PKI's server certificate,
/// and `require_secure_transport`, so nothing reaches it in plain text. The certificate files
/// it reads are copies, swapped by [`OwnMariadb::serve`] and reloaded with `FLUSH SSL`.
struct OwnMariadb {
    _server: common::mariadb::OwnMariadb,
    port: u16,
    cert: PathBuf,
}

impl OwnMariadb {
    fn start(pki: &Pki) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let cert = dir.path().join("server-cert.pem");
        std::fs::copy(pki.path("server.pem"), &cert).expect("copy cert");
        let tls = [
            format!("--ssl-cert={}", cert.display()),
            format!("--ssl-key={}", pki.path("server.key").display()),
            format!("--ssl-ca={}", pki.path("ca.pem").display()),
            "--require-secure-transport=ON".to_owned(),
        ];
        let server = common::mariadb::OwnMariadb::start(dir, &tls);
        Self { port: server.port, _server: server, cert }
    }

    fn url(&self, user: &str) -> String {
        format!("mysql://{user}@127.0.0.1:{}/test", self.port)
    }

    /// Serves `cert` (a file of `pki`) from now on.
    async fn serve(&self, pki: &Pki, cert: &str, admin: &mut mysql_async::Conn) {
        std::fs::copy(pki.path(cert), &self.cert).expect("swap cert");
        admin.query_drop("FLUSH SSL").await.expect("FLUSH SSL");
    }
}

fn sink_config(url: String, tls: TlsConfig, table: &str) -> MysqlSinkConfig {
    MysqlSinkConfig {
        url: SecretUrl::new(url),
        tls,
        table: table.into(),
        connect_timeout: Duration::from_secs(5),
        ..MysqlSinkConfig::default()
    }
}

async fn mysql_connect_error(config: &MysqlSinkConfig) -> String {
    match MysqlSink::connect(config).await {
        Ok(_) => panic!("connected to {} although it must fail", config.url),
        Err(e) => e.to_string(),
    }
}

/// One test, one bootstrap: the server, the right and wrong CAs, a client certificate with a
/// password file, a certificate for another name, and an expired one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_over_tls_verifies_the_server_and_fails_clearly() {
    let pki = Pki::generate();
    let db = OwnMariadb::start(&pki);

    // The sink with full verification against the test's CA: it creates its tables, writes a
    // batch, and its connection is encrypted.
    let config = sink_config(db.url("root"), pki.tls("ca.pem"), "tls_events");
    let mut admin = mysql_async::Conn::new({
        let mut c = config.clone();
        c.url = SecretUrl::new(format!("mysql://root@127.0.0.1:{}/mysql", db.port));
        c.opts().expect("opts")
    })
    .await
    .expect("admin connection over TLS");
    admin.query_drop("CREATE DATABASE IF NOT EXISTS test").await.expect("create database");
    let sink = MysqlSink::connect(&config).await.expect("the sink connects with verification on");
    let payload = br#"{"event_id":"tls-1","tracking_id":"T1","status":"DELIVERED","event_time":"2026-01-01T00:00:00Z"}"#;
    let outcome = sink.write_batch(&[Record::new("t", 0, 0, Some(payload.to_vec()))]).await.expect("write");
    assert_eq!(outcome.inserted, 1, "{outcome:?}");
    let mut conn = sink.pool().get_conn().await.expect("pool connection");
    let cipher: Option<(String, String)> =
        conn.query_first("SHOW STATUS LIKE 'Ssl_cipher'").await.expect("status");
    let cipher = cipher.map(|(_, c)| c).unwrap_or_default();
    assert!(!cipher.is_empty(), "the sink's pool connection is not encrypted");
    drop(conn);
    sink.close().await.expect("close");

    // Without TLS the server refuses the same user (require_secure_transport; MariaDB says
    // "Access denied"): TLS is really in use above.
    let e = mysql_connect_error(&sink_config(db.url("root"), TlsConfig::default(), "tls_events")).await;
    assert!(e.contains("insecure transport") || e.contains("Access denied"), "{e}");

    // A CA that did not sign the server's certificate: startup fails, naming mysql, the
    // redacted URL and the cause.
    admin
        .query_drop("CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'mysql-file-secret' REQUIRE X509")
        .await
        .expect("user");
    admin.query_drop("GRANT ALL ON test.* TO 'app'@'%'").await.expect("grant");
    let e = mysql_connect_error(&sink_config(
        db.url("app:mysql-url-secret"),
        pki.tls("other-ca.pem"),
        "tls_events",
    ))
    .await;
    assert!(
        e.starts_with(&format!(
            "mysql.url: cannot connect to mysql at mysql://app:***@127.0.0.1:{}/test",
            db.port
        )),
        "{e}"
    );
    assert!(e.contains("certificate is not trusted") && e.contains("mysql.tls.ca_file"), "{e}");
    assert!(!e.contains("mysql-url-secret"), "{e}");

    // A user that must present a client certificate, with the password from a file.
    let password = pki.path("mysql-password");
    std::fs::write(&password, "mysql-file-secret\n").expect("write");
    let mut app = sink_config(db.url("app"), pki.with_client_cert(pki.tls("ca.pem")), "tls_events");
    app.password_file = Some(password);
    app.create_table = false;
    MysqlSink::connect(&app)
        .await
        .expect("client certificate and password file")
        .close()
        .await
        .expect("close");
    app.tls = pki.tls("ca.pem");
    let e = mysql_connect_error(&app).await;
    assert!(e.contains("Access denied"), "no client certificate, no entry: {e}");

    // A trusted certificate for another name: refused, saying so.
    db.serve(&pki, "elsewhere.pem", &mut admin).await;
    let e = mysql_connect_error(&config).await;
    assert!(e.contains("does not name the host"), "{e}");

    // An expired certificate.
    db.serve(&pki, "expired.pem", &mut admin).await;
    let e = mysql_connect_error(&config).await;
    assert!(e.starts_with("mysql.url: cannot connect to mysql at mysql://root@127.0.0.1"), "{e}");
    assert!(e.contains("certificate has expired"), "{e}");
    drop(admin);
}

/// The same against Oracle MySQL of the test's own (`scripts/mysql.sh mysqld`, a fresh data
/// directory), TLS with the PKI's server certificate and `require_secure_transport`. Its users
/// have `caching_sha2_password`, whose password travels over the verified TLS connection.
/// MySQL itself refuses to load an expired certificate (`ALTER INSTANCE RELOAD TLS`: "Invalid
/// certificates"), so that case is the MariaDB test's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_over_tls_verifies_the_server_and_fails_clearly() {
    let pki = Pki::generate();
    let cert = pki.path("mysql-server.pem");
    std::fs::copy(pki.path("server.pem"), &cert).expect("copy cert");
    let file = |name: &str, path: &Path| format!("--{name}={}", path.display());
    let db = common::mysql::OwnMysql::start(&[
        file("ssl-ca", &pki.path("ca.pem")),
        file("ssl-cert", &cert),
        file("ssl-key", &pki.path("server.key")),
        "--require-secure-transport=ON".into(),
    ]);

    let config = sink_config(db.url("root", "test"), pki.tls("ca.pem"), "tls_events");
    let mut admin = mysql_async::Conn::new({
        let mut c = config.clone();
        c.url = SecretUrl::new(db.url("root", "mysql"));
        c.opts().expect("opts")
    })
    .await
    .expect("admin connection over TLS");
    let version: Option<String> = admin.query_first("SELECT VERSION()").await.expect("version");
    assert!(!version.clone().unwrap_or_default().contains("MariaDB"), "{version:?}");
    admin.query_drop("CREATE DATABASE IF NOT EXISTS test").await.expect("create database");
    let sink = MysqlSink::connect(&config).await.expect("the sink connects with verification on");
    let payload = br#"{"event_id":"tls-1","tracking_id":"T1","status":"DELIVERED","event_time":"2026-01-01T00:00:00Z"}"#;
    let outcome = sink.write_batch(&[Record::new("t", 0, 0, Some(payload.to_vec()))]).await.expect("write");
    assert_eq!(outcome.inserted, 1, "{outcome:?}");
    let mut conn = sink.pool().get_conn().await.expect("pool connection");
    let cipher: Option<(String, String)> =
        conn.query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'").await.expect("status");
    let cipher = cipher.map(|(_, c)| c).unwrap_or_default();
    assert!(!cipher.is_empty(), "the sink's pool connection is not encrypted");
    drop(conn);
    sink.close().await.expect("close");

    let e =
        mysql_connect_error(&sink_config(db.url("root", "test"), TlsConfig::default(), "tls_events")).await;
    assert!(e.contains("insecure transport"), "{e}");

    admin
        .query_drop(
            "CREATE USER 'app'@'%' IDENTIFIED WITH caching_sha2_password BY 'mysql-file-secret' REQUIRE X509",
        )
        .await
        .expect("user");
    admin.query_drop("GRANT ALL ON test.* TO 'app'@'%'").await.expect("grant");
    let e = mysql_connect_error(&sink_config(
        db.url("app:mysql-url-secret", "test"),
        pki.tls("other-ca.pem"),
        "tls_events",
    ))
    .await;
    assert!(
        e.starts_with(&format!(
            "mysql.url: cannot connect to mysql at mysql://app:***@127.0.0.1:{}/test",
            db.port
        )),
        "{e}"
    );
    assert!(e.contains("certificate is not trusted") && e.contains("mysql.tls.ca_file"), "{e}");
    assert!(!e.contains("mysql-url-secret"), "{e}");

    let password = pki.path("mysql-password");
    std::fs::write(&password, "mysql-file-secret\n").expect("write");
    let mut app = sink_config(db.url("app", "test"), pki.with_client_cert(pki.tls("ca.pem")), "tls_events");
    app.password_file = Some(password);
    app.create_table = false;
    MysqlSink::connect(&app)
        .await
        .expect("client certificate and password file")
        .close()
        .await
        .expect("close");
    app.tls = pki.tls("ca.pem");
    let e = mysql_connect_error(&app).await;
    assert!(e.contains("Access denied"), "no client certificate, no entry: {e}");

    std::fs::copy(pki.path("elsewhere.pem"), &cert).expect("swap cert");
    admin.query_drop("ALTER INSTANCE RELOAD TLS").await.expect("reload TLS");
    let e = mysql_connect_error(&config).await;
    assert!(e.contains("does not name the host"), "{e}");
    drop(admin);
}

/// A tansu broker of the test's own behind `socat`, which terminates TLS with the PKI's server
/// certificate (and, with `client_cert`, requires one signed by the CA). tansu advertises the
/// TLS port, so every connection a client makes goes through TLS.
struct TlsKafka {
    _broker: Own,
    _proxy: Own,
    port: u16,
}

/// A tansu broker of the test's own listening on `listen` and advertising `advertised`;
/// with `authentication`, it asks for SASL (SCRAM) and knows no user.
fn tansu(listen: u16, advertised: u16, authentication: bool) -> Own {
    let dir = std::env::var("TEST_KAFKA_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/kafka").to_owned());
    let mut cmd = Command::new(format!("{dir}/tansu"));
    cmd.args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{listen}")])
        .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{advertised}")])
        .args(["--storage-engine", "memory://tansu/"]);
    if authentication {
        cmd.arg("--authentication");
    }
    let broker = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu must be installed by `scripts/kafka.sh start`");
    let broker = Own(broker);
    wait_port(listen, "tansu");
    broker
}

impl TlsKafka {
    fn start(pki: &Pki, client_cert: bool) -> Self {
        Self::start_with(pki, "server.pem", client_cert)
    }

    fn start_with(pki: &Pki, cert: &str, client_cert: bool) -> Self {
        let (listen, port) = (free_port(), free_port());
        let broker = tansu(listen, port, false);
        let listen_spec = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify={}",
            pki.path(cert).display(),
            pki.path("server.key").display(),
            pki.path("ca.pem").display(),
            u8::from(client_cert),
        );
        let proxy = Command::new("socat")
            .args([listen_spec, format!("TCP:127.0.0.1:{listen}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat must be installed (apt-get install socat)");
        let proxy = Own(proxy);
        wait_port(port, "socat (TLS in front of tansu)");
        Self { _broker: broker, _proxy: proxy, port }
    }

    fn config(&self, tls: TlsConfig) -> KafkaSourceConfig {
        KafkaSourceConfig { brokers: format!("127.0.0.1:{}", self.port), tls, ..KafkaSourceConfig::default() }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_verifies_the_broker() {
    let pki = Pki::generate();
    let kafka = TlsKafka::start(&pki, false);
    let timeout = Duration::from_secs(5);
    KafkaSource::check_connection(&kafka.config(pki.tls("ca.pem")), timeout)
        .await
        .expect("TLS with the right CA");
    // Refusals come within milliseconds; each check below still waits out its timeout.
    let timeout = Duration::from_secs(2);
    let e = KafkaSource::check_connection(&kafka.config(pki.tls("other-ca.pem")), timeout)
        .await
        .expect_err("a CA that did not sign the broker's certificate")
        .to_string();
    assert!(
        e.starts_with("kafka.brokers: ")
            && e.contains("could not be verified")
            && e.contains("kafka.tls.ca_file"),
        "{e}"
    );
    let e = KafkaSource::check_connection(&kafka.config(TlsConfig::default()), timeout)
        .await
        .expect_err("plain text to a TLS port")
        .to_string();
    assert!(e.starts_with("kafka.brokers: "), "{e}");

    let mutual = TlsKafka::start(&pki, true);
    let e = KafkaSource::check_connection(&mutual.config(pki.tls("ca.pem")), timeout)
        .await
        .expect_err("no client certificate")
        .to_string();
    assert!(e.starts_with("kafka.brokers: "), "{e}");
    KafkaSource::check_connection(
        &mutual.config(pki.with_client_cert(pki.tls("ca.pem"))),
        Duration::from_secs(10),
    )
    .await
    .expect("client certificate");

    let expired = TlsKafka::start_with(&pki, "expired.pem", false);
    let e = KafkaSource::check_connection(&expired.config(pki.tls("ca.pem")), timeout)
        .await
        .expect_err("an expired certificate")
        .to_string();
    // librdkafka reports every verification failure in the same words.
    assert!(e.contains("could not be verified") && e.contains("has expired"), "{e}");
}

/// No SASL-capable broker here can be given a user (tansu's users live in its storage, and
/// creating one needs an authenticated client), so this checks the other half: the SCRAM
/// exchange reaches the broker with the configured user, and its refusal is explained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sasl_reaches_the_broker_and_a_refusal_is_explained() {
    let port = free_port();
    let _broker = tansu(port, port, true);
    let config = KafkaSourceConfig {
        brokers: format!("127.0.0.1:{port}"),
        sasl: dp_source_kafka::SaslConfig {
            mechanism: Some(dp_source_kafka::SaslMechanism::ScramSha256),
            username: Some("pipeline".into()),
            password: Some(dp_core::Secret::new("sasl-secret")),
            password_file: None,
        },
        ..KafkaSourceConfig::default()
    };
    config.validate().expect("valid");
    let e = KafkaSource::check_connection(&config, Duration::from_secs(2))
        .await
        .expect_err("the broker knows no user")
        .to_string();
    assert!(e.contains("refused the SASL login") && e.contains("SCRAM"), "{e}");
    assert!(!e.contains("sasl-secret"), "{e}");
}

/// The whole path over TLS to Kafka: topic creation and events from `produce` and the dead-letter
/// topic's admin client and producer, the consumer of `run` — all with the same settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_consumes_and_dead_letters_over_tls() {
    let pki = Pki::generate();
    let kafka = TlsKafka::start(&pki, true);
    let env = TestEnv::new("tls_pipeline");
    let mut config = kafka.config(pki.with_client_cert(pki.tls("ca.pem")));
    config.topics = vec![env.topic.clone()];
    delivery_pipeline::produce::ensure_topic_for(&config, &env.topic, 2).await.expect("topic over TLS");
    let producer = delivery_pipeline::produce::producer_for(&config).expect("producer");
    let report = delivery_pipeline::produce::produce(
        &producer,
        &delivery_pipeline::produce::ProduceOptions {
            brokers: config.brokers.clone(),
            topic: env.topic.clone(),
            count: 200,
            rate: None,
            progress: false,
            collect_ids: true,
        },
    )
    .await
    .expect("produce over TLS");
    let bad = rdkafka::producer::FutureRecord::<str, str>::to(&env.topic).payload("not json");
    producer.send(bad, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("a bad event");

    let path = |name: &str| pki.path(name).to_string_lossy().into_owned();
    let brokers = config.brokers.clone();
    let mut child = env.spawn(
        &["run"],
        &[
            ("DP_KAFKA__BROKERS", &brokers),
            ("DP_KAFKA__TLS__ENABLED", "true"),
            ("DP_KAFKA__TLS__CA_FILE", &path("ca.pem")),
            ("DP_KAFKA__TLS__CERT_FILE", &path("client.pem")),
            ("DP_KAFKA__TLS__KEY_FILE", &path("client.key")),
            ("DP_DEAD_LETTER__KAFKA", "true"),
        ],
    );
    wait_for("every event stored over TLS", Duration::from_secs(60), || async {
        env.rows_so_far().await >= report.produced
    })
    .await;
    let status = common::sigterm(&mut child, Duration::from_secs(25));
    assert!(status.success(), "clean exit, got {status}; log: {}", env.log_path().display());
    assert_eq!(common::as_set(env.event_ids().await), common::as_set(report.event_ids));
    // The dead-letter topic was created, and written, through TLS.
    let consumer: rdkafka::consumer::BaseConsumer = {
        let mut c = config.common_client_config().expect("config");
        c.set("group.id", format!("{}-dlq", env.group)).set("auto.offset.reset", "earliest");
        c.create().expect("consumer")
    };
    // Assigned, not subscribed: no group to join.
    let mut partitions = rdkafka::TopicPartitionList::new();
    for p in 0..2 {
        partitions
            .add_partition_offset(&format!("{}.dlq", env.topic), p, rdkafka::Offset::Beginning)
            .expect("partition");
    }
    rdkafka::consumer::Consumer::assign(&consumer, &partitions).expect("assign");
    let started = Instant::now();
    let dead = loop {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            break m.expect("dead letter");
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no dead letter on {}.dlq", env.topic);
    };
    assert_eq!(rdkafka::Message::payload(&dead), Some(&b"not json"[..]));
    env.drop_tables().await;
}

fn run_binary(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_delivery-pipeline"));
    cmd.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd.env("DP_INSTANCE_ID", "tls-test").env("DP_HTTP__ADDRESS", "127.0.0.1:0").env("RUST_LOG", "debug");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("run delivery-pipeline")
}

fn output_text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Secrets given every way — in URLs, files and variables — never appear in what the binary
/// prints, logs at debug level included, when the servers refuse them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_output_of_a_failing_start() {
    common::require_services();
    let dir = tempfile::tempdir().expect("tmp");
    let file = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).expect("write");
        p.to_string_lossy().into_owned()
    };
    let mysql_file = file("mysql", "mysql-file-secret\n");
    let redis_file = file("redis", "redis-file-secret\n");
    let kafka_file = file("kafka", "kafka-file-secret\n");
    let secrets = [
        "mysql-url-secret",
        "mysql-file-secret",
        "redis-url-secret",
        "redis-file-secret",
        "kafka-env-secret",
        "kafka-file-secret",
        "kafka-property-secret",
    ];
    let redis = common::OwnRedis::start(free_port());
    let admin = redis.client().await;
    fred::interfaces::ConfigInterface::config_set(&admin, "requirepass", "the-right-one")
        .await
        .expect("requirepass");
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let check = |out: &Output, what: &str| {
        let text = output_text(out);
        assert_eq!(out.status.code(), Some(1), "{what} must fail:\n{text}");
        for secret in secrets {
            assert!(!text.contains(secret), "{what} printed {secret}:\n{text}");
        }
        text
    };

    // check-config tries all three and prints the settings.
    let out = run_binary(
        &["check-config"],
        &[
            ("DP_MYSQL__URL", "mysql://root:mysql-url-secret@127.0.0.1:3306/test"),
            ("DP_MYSQL__CONNECT_TIMEOUT", "3s"),
            ("DP_REDIS__URL", &redis_url),
            ("DP_REDIS__PASSWORD_FILE", &redis_file),
            ("DP_KAFKA__BROKERS", "127.0.0.1:1"),
            ("DP_KAFKA__SASL__MECHANISM", "SCRAM-SHA-256"),
            ("DP_KAFKA__SASL__USERNAME", "pipeline"),
            ("DP_KAFKA__SASL__PASSWORD", "kafka-env-secret"),
            ("DP_KAFKA__PROPERTIES__SSL_KEY_PASSWORD", "kafka-property-secret"),
        ],
    );
    let text = check(&out, "check-config");
    assert!(text.contains("mysql://root:***@127.0.0.1:3306/test"), "{text}");
    for svc in ["kafka", "redis", "mysql"] {
        assert!(text.contains(&format!("FAIL  {svc}")), "{svc}:\n{text}");
    }

    // run: a wrong Redis password in the URL, then (Redis right) a wrong MySQL password from a
    // file, with the Kafka password from a file.
    let out = run_binary(
        &["run"],
        &[("DP_REDIS__URL", &format!("redis://:redis-url-secret@127.0.0.1:{}", redis.port))],
    );
    let text = check(&out, "run with a wrong redis password");
    assert!(text.contains(&format!("redis://:***@127.0.0.1:{}", redis.port)), "{text}");
    let right = file("redis-right", "the-right-one\n");
    let out = run_binary(
        &["run"],
        &[
            ("DP_REDIS__URL", &redis_url),
            ("DP_REDIS__PASSWORD_FILE", &right),
            ("DP_REDIS__KEY_PREFIX", "tls-secrets"),
            ("DP_MYSQL__PASSWORD_FILE", &mysql_file),
            ("DP_KAFKA__SASL__MECHANISM", "PLAIN"),
            ("DP_KAFKA__SASL__USERNAME", "pipeline"),
            ("DP_KAFKA__SASL__PASSWORD_FILE", &kafka_file),
        ],
    );
    let text = check(&out, "run with a wrong mysql password");
    assert!(text.contains("Access denied"), "{text}");
}

/// The Schema Registry over HTTPS (the test registry with this PKI's server certificate): with
/// the right CA a schema is fetched and a value decodes; with another CA, or a certificate for
/// another name, the registry counts as unreachable (an outage: retried, nothing dead-lettered)
/// and the error says why.
#[tokio::test]
async fn the_schema_registry_over_tls_verifies_the_server() {
    use dp_schema_registry::{Decoder, Format, RegistryError, SchemaRegistryConfig};
    let pki = Pki::generate();
    let start = |cert: &str| {
        let port = free_port();
        std::fs::write(
            pki.path(&format!("registry-{port}.json")),
            r#"{"schemas": [{"schema": "\"string\"", "schemaType": "AVRO", "references": []}], "subjects": {}, "requests": {}}"#,
        )
        .expect("state");
        let child = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/schema_registry.py"))
            .args(["--port", &port.to_string(), "--state"])
            .arg(pki.path(&format!("registry-{port}.json")))
            .arg("--cert")
            .arg(pki.path(cert))
            .arg("--key")
            .arg(pki.path("server.key"))
            .stdout(Stdio::null())
            .spawn()
            .expect("python3");
        wait_port(port, "the test registry");
        (Own(child), format!("https://localhost:{port}"))
    };
    // Schema 1 is the Avro string; the value "abc".
    let framed: &[u8] = &[0, 0, 0, 0, 1, 6, b'a', b'b', b'c'];
    let decoder = |url: &str, tls: TlsConfig| {
        Decoder::new(&SchemaRegistryConfig {
            url: vec![url.to_owned()],
            tls,
            ..SchemaRegistryConfig::default()
        })
        .expect("decoder")
    };
    let (_good, url) = start("server.pem");
    let d = decoder(&url, pki.tls("ca.pem"));
    d.prepare(&[framed]).await.expect("fetched over TLS");
    assert_eq!(d.decode(Format::Avro, framed).as_deref(), Ok(r#""abc""#));
    let e = decoder(&url, pki.tls("other-ca.pem")).prepare(&[framed]).await.expect_err("untrusted");
    assert!(
        matches!(&e, RegistryError::Unavailable(m) if m.contains("not trusted") && m.contains("schema_registry.tls.ca_file")),
        "{e:?}"
    );
    let (_elsewhere, url) = start("elsewhere.pem");
    let e = decoder(&url, pki.tls("ca.pem")).prepare(&[framed]).await.expect_err("another name");
    assert!(matches!(&e, RegistryError::Unavailable(m) if m.contains("does not name the host")), "{e:?}");
    let lowered = TlsConfig { verify: TlsVerify::Ca, ..pki.tls("ca.pem") };
    decoder(&url, lowered).prepare(&[framed]).await.expect("verify = ca accepts another name");
}
