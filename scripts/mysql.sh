#!/usr/bin/env bash
# Start or stop the Oracle MySQL server the MySQL twins of the sink's tests and
# bins/delivery-pipeline/tests/mysql_server.rs run against (MariaDB on 3306 stays the main store).
#
#   scripts/mysql.sh start     # install once, initialize once, start, check and print the version
#   scripts/mysql.sh stop
#   scripts/mysql.sh status
#   scripts/mysql.sh url       # the URL the tests use (their TEST_MYSQL_URL)
#   scripts/mysql.sh mysqld ARGS...   # the installed mysqld with ARGS, for tests that start a
#                                     # server of their own (TLS); `start` installs it
#
# This Debian release ships no MySQL server; Debian unstable does (mysql-server-core). Nothing is
# installed into the system: apt-get runs with a private configuration whose only source is the
# unstable suite, an empty dpkg status and state/cache folders under target/mysql/apt (the .debs
# stay there and are reused), each package is unpacked with `dpkg-deb -x` into target/mysql/root,
# and mysqld runs under that root's own dynamic loader and libraries (unstable's glibc is newer
# than this system's). Server: 127.0.0.1 only, root without a password, database `test`, data in
# target/mysql/data (initialized once). `rm -rf target/mysql` starts over with today's packages.
#
# Authentication stays MySQL's default, caching_sha2_password: the tests' client (mysql_async)
# fetches the server's RSA key itself when a password must travel over plain TCP, and root has
# no password. The server makes its own TLS certificates at initialization (TLS available).
#
# TEST_MYSQL_PORT (3307) and TEST_MYSQL_DIR (target/mysql) override the defaults; the names
# avoid the DP_ prefix, which the binary reads as settings.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir="${TEST_MYSQL_DIR:-$root/target/mysql}"
port="${TEST_MYSQL_PORT:-3307}"
# The tests were written against this major version. A new one may change the SQL the server
# accepts: run the tests against it before changing this number.
expected_major=9
packages=(mysql-server-core mysql-client-core)

apt_dir="$dir/apt"
inst="$dir/root"
data="$dir/data"
run_dir="$dir/run"
log="$dir/mysqld.log"
pidfile="$run_dir/mysqld.pid"

case "$(dpkg --print-architecture)" in
  amd64) triplet=x86_64-linux-gnu loader=ld-linux-x86-64.so.2 ;;
  arm64) triplet=aarch64-linux-gnu loader=ld-linux-aarch64.so.1 ;;
  *) echo "mysql.sh: unsupported architecture $(dpkg --print-architecture)" >&2; exit 1 ;;
esac

say() { echo "mysql.sh: $*" >&2; }
answering() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
running() { [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

# A program of the unpacked root, run under the root's own loader and libraries.
in_root() {
  local prog=$1; shift
  "$inst/usr/lib/$triplet/$loader" --library-path "$inst/usr/lib/$triplet" "$inst$prog" "$@"
}

client() { in_root /usr/bin/mysql --no-defaults --protocol=TCP -h127.0.0.1 -P"$port" -uroot "$@"; }

download() {
  mkdir -p "$apt_dir"/{etc/apt.conf.d,etc/preferences.d,etc/sources.list.d,state/lists/partial,cache/archives/partial}
  : >"$apt_dir/state/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian unstable main" \
    >"$apt_dir/etc/sources.list"
  # Dir::Etc::parts points at an empty folder of our own, so none of the system's apt settings
  # (hooks, proxies, pins) apply. The registry mirror here serves a snapshot whose Release file
  # may be past its Valid-Until date; signatures are still checked.
  cat >"$apt_dir/apt.conf" <<EOF
Dir::Etc "$apt_dir/etc";
Dir::Etc::main "/dev/null";
Dir::Etc::parts "$apt_dir/etc/apt.conf.d";
Dir::Etc::sourcelist "$apt_dir/etc/sources.list";
Dir::Etc::sourceparts "$apt_dir/etc/sources.list.d";
Dir::Etc::preferences "$apt_dir/etc/preferences";
Dir::Etc::preferencesparts "$apt_dir/etc/preferences.d";
Dir::State "$apt_dir/state";
Dir::State::status "$apt_dir/state/status";
Dir::Cache "$apt_dir/cache";
APT::Architecture "$(dpkg --print-architecture)";
APT::Install-Recommends "false";
Acquire::Languages "none";
Acquire::Check-Valid-Until "false";
Acquire::Check-Date "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  say "downloading ${packages[*]} and their libraries from Debian unstable into $apt_dir/cache"
  local out="$apt_dir/apt.log"
  if ! APT_CONFIG="$apt_dir/apt.conf" apt-get update >"$out" 2>&1 ||
    ! APT_CONFIG="$apt_dir/apt.conf" apt-get install -y --download-only "${packages[@]}" >>"$out" 2>&1; then
    say "apt-get failed; its output follows"; cat "$out" >&2; exit 1
  fi
  # Only the .debs are kept (~70 MB); the package lists are fetched again when needed.
  rm -rf "$apt_dir/state/lists"
  touch "$apt_dir/downloaded"
}

install() {
  [[ -f $inst/.complete ]] && return
  [[ -f $apt_dir/downloaded ]] || download
  rm -rf "$inst" "$data"
  mkdir -p "$inst"
  local deb n=0
  for deb in "$apt_dir"/cache/archives/*.deb; do
    # Perl only serves helper scripts (mysqld_multi, mysqldumpslow), never the server.
    case "$(basename "$deb")" in perl_* | perl-* | libperl*) continue ;; esac
    dpkg-deb -x "$deb" "$inst"
    n=$((n + 1))
  done
  [[ -x $inst/usr/sbin/mysqld ]] || { say "no usr/sbin/mysqld in the unpacked packages"; exit 1; }
  touch "$inst/.complete"
  say "unpacked $n packages into $inst ($(du -sh "$inst" | cut -f1))"
}

# What every server of this installation runs with, the shared one and the tests' own.
base_args() {
  args=(--no-defaults
    --basedir="$inst/usr" --lc-messages-dir="$inst/usr/share/mysql" --plugin-dir="$inst/usr/lib/mysql/plugin"
    # Smaller and lighter than the defaults (~300 MB of memory, ~100 MB of data): no
    # performance schema, a 16 MB redo log, no binary log, no X protocol port.
    --performance-schema=OFF --innodb-redo-log-capacity=16M --skip-log-bin --mysqlx=OFF)
  # mysqld refuses to run as root unless told to.
  [[ $(id -u) -eq 0 ]] && args+=(--user=root)
  return 0
}

server_args() {
  base_args
  args+=(--datadir="$data" --tmpdir="$run_dir" --secure-file-priv="$run_dir/files")
}

initialize() {
  [[ -f $data/.complete ]] && return
  rm -rf "$data"
  mkdir -p "$run_dir/files"
  server_args
  say "initializing $data"
  if ! in_root /usr/sbin/mysqld "${args[@]}" --initialize-insecure --log-error="$dir/initialize.log"; then
    say "initialization failed; log follows"; cat "$dir/initialize.log" >&2; exit 1
  fi
  touch "$data/.complete"
}

# The server's version; fails loudly when its major version is not the expected one.
check_version() {
  local version
  version=$(client -NBe 'SELECT VERSION()') || { say "cannot query the server on 127.0.0.1:$port"; exit 1; }
  if [[ $version == *MariaDB* || ${version%%.*} != "$expected_major" ]]; then
    say "EXPECTED MySQL $expected_major.x ON 127.0.0.1:$port BUT THE SERVER IS $version"
    say "(a new major version: run the tests against it, then change expected_major in $0)"
    exit 1
  fi
  echo "$version" >"$dir/VERSION"
  echo "mysql.sh: MySQL $version on 127.0.0.1:$port"
}

start() {
  if running && answering; then
    check_version
    echo "mysql.sh: already running (pid $(cat "$pidfile"))"
    return
  fi
  if answering; then
    say "something else listens on 127.0.0.1:$port; set TEST_MYSQL_PORT to use another port"
    exit 1
  fi
  local started=$SECONDS
  install
  initialize
  mkdir -p "$run_dir/files" && chmod 700 "$run_dir/files"
  server_args
  nohup "$inst/usr/lib/$triplet/$loader" --library-path "$inst/usr/lib/$triplet" "$inst/usr/sbin/mysqld" \
    "${args[@]}" --port="$port" --bind-address=127.0.0.1 --socket="$run_dir/mysqld.sock" \
    --pid-file="$pidfile.server" --log-error="$log" >"$dir/mysqld.out" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 600); do
    if answering; then
      client -e 'CREATE DATABASE IF NOT EXISTS test'
      check_version
      echo "mysql.sh: up in $((SECONDS - started))s (pid $(cat "$pidfile"); data $(du -sh "$data" | cut -f1), binaries $(du -sh "$inst" | cut -f1))"
      return
    fi
    if ! running; then say "mysqld exited; log follows"; cat "$log" "$dir/mysqld.out" >&2; exit 1; fi
    sleep 0.1
  done
  say "mysqld did not answer within 60s; log follows"; cat "$log" >&2; exit 1
}

stop() {
  if running; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 1 300); do running || break; sleep 0.1; done
    running && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    echo "mysql.sh: stopped"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status)
    if running && answering; then echo "running (pid $(cat "$pidfile")): MySQL $(client -NBe 'SELECT VERSION()')"
    else echo "stopped"; exit 1; fi ;;
  url) echo "mysql://root@127.0.0.1:$port/test" ;;
  mysqld)
    [[ -f $inst/.complete ]] || { say "not installed in $inst: run \`scripts/mysql.sh start\` first"; exit 1; }
    shift
    base_args
    exec "$inst/usr/lib/$triplet/$loader" --library-path "$inst/usr/lib/$triplet" "$inst/usr/sbin/mysqld" \
      "${args[@]}" "$@" ;;
  *) echo "usage: $0 start|stop|restart|status|url|mysqld ARGS..." >&2; exit 2 ;;
esac
