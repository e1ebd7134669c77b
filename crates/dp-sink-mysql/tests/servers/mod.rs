//! The two servers the sink's integration tests run against: MariaDB on 127.0.0.1:3306 (the
//! README's set-up) and Oracle MySQL on 127.0.0.1:3307, started by `scripts/mysql.sh start`
//! (`TEST_MYSQL_URL` names another). [`on_both_servers!`] generates each test once per server,
//! `<test>::mariadb` and `<test>::mysql`; a server that does not answer fails its twin, naming
//! how to start it — never a skip.

#![allow(dead_code)]

use mysql_async::prelude::Queryable;

/// MariaDB, as the README sets it up.
pub const MARIADB_URL: &str = "mysql://root@127.0.0.1:3306/test";
/// The variable naming the MySQL server's URL (no `DP_` prefix: the binary reads those).
pub const MYSQL_URL_VAR: &str = "TEST_MYSQL_URL";
/// Where `scripts/mysql.sh start` runs MySQL (`scripts/mysql.sh url` prints it).
pub const MYSQL_DEFAULT_URL: &str = "mysql://root@127.0.0.1:3307/test";

/// One server a test runs against.
#[derive(Debug, Clone)]
pub struct Server {
    /// `MariaDB` or `MySQL`.
    pub name: &'static str,
    /// `mysql://root@host:port/test`: root, no password.
    pub url: String,
    start: &'static str,
}

impl Server {
    pub fn mariadb() -> Self {
        Self {
            name: "MariaDB",
            url: MARIADB_URL.to_owned(),
            start: "start MariaDB (user root, empty password, database test)",
        }
    }

    pub fn mysql() -> Self {
        Self {
            name: "MySQL",
            url: std::env::var(MYSQL_URL_VAR).unwrap_or_else(|_| MYSQL_DEFAULT_URL.to_owned()),
            start: "run `scripts/mysql.sh start`",
        }
    }

    pub fn is_mysql(&self) -> bool {
        self.name == "MySQL"
    }

    fn opts(&self) -> mysql_async::Opts {
        mysql_async::Opts::from_url(&self.url)
            .unwrap_or_else(|e| panic!("{} URL {}: {e}", self.name, self.url))
    }

    /// `host:port`, for a proxy in front of the server.
    pub fn address(&self) -> String {
        let o = self.opts();
        format!("{}:{}", o.ip_or_hostname(), o.tcp_port())
    }

    /// The URL with another user and password.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        let db = self.opts().db_name().unwrap_or("test").to_owned();
        format!("mysql://{user}:{password}@{}/{db}", self.address())
    }

    /// A pool straight to the server over TCP, once it answered and proved to be the server
    /// it is named for (so a MySQL twin never passes against MariaDB).
    pub async fn pool(&self) -> mysql_async::Pool {
        let opts = mysql_async::OptsBuilder::from_opts(self.opts()).prefer_socket(false);
        let pool = mysql_async::Pool::new(opts);
        let version = self.version(&pool).await;
        assert_eq!(
            version.contains("MariaDB"),
            !self.is_mysql(),
            "{} at {} answers as {version}",
            self.name,
            self.url
        );
        pool
    }

    pub async fn conn(&self) -> mysql_async::Conn {
        self.pool().await.get_conn().await.expect("a second connection")
    }

    /// The sink's settings for the built-in `table` on this server, its offsets in
    /// `<table>_offsets`, after dropping what an earlier run left of its three tables.
    pub async fn fresh_sink_config(
        &self,
        conn: &mut mysql_async::Conn,
        table: &str,
    ) -> dp_sink_mysql::MysqlSinkConfig {
        conn.query_drop(format!("DROP TABLE IF EXISTS `{table}`, `{table}_dead_letter`, `{table}_offsets`"))
            .await
            .expect("drop");
        dp_sink_mysql::MysqlSinkConfig {
            url: dp_core::SecretUrl::new(&self.url),
            table: table.to_owned(),
            offsets_table: format!("{table}_offsets"),
            ..dp_sink_mysql::MysqlSinkConfig::default()
        }
    }

    /// A connection, after dropping every table `config` writes (its mapped tables, the
    /// dead-letter and offsets tables) that an earlier run left.
    pub async fn fresh(&self, config: &dp_sink_mysql::MysqlSinkConfig) -> mysql_async::Conn {
        let mut conn = self.conn().await;
        for t in config
            .tables()
            .expect("valid")
            .iter()
            .map(|t| t.table.as_str().to_owned())
            .chain([config.dead_letter_table(), config.offsets_table.clone()])
        {
            conn.query_drop(format!("DROP TABLE IF EXISTS `{t}`")).await.expect("drop");
        }
        conn
    }

    async fn version(&self, pool: &mysql_async::Pool) -> String {
        let mut conn = pool.get_conn().await.unwrap_or_else(|e| {
            panic!(
                "{} must answer on {} (user root, database test): {e}; {}",
                self.name, self.url, self.start
            )
        });
        conn.query_first("SELECT VERSION()").await.expect("version").expect("a version")
    }
}

/// Generates `mod <test> { mariadb, mysql }` for each `async fn <test>(server: &Server)`.
macro_rules! on_both_servers {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn mariadb() {
                super::$test(&crate::servers::Server::mariadb()).await
            }

            #[tokio::test]
            async fn mysql() {
                super::$test(&crate::servers::Server::mysql()).await
            }
        }
    )*};
}
pub(crate) use on_both_servers;
