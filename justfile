# delivery-pipeline tasks. `just --list` shows them all.

# The main job end to end: embedded Kafka, local MariaDB and Redis.
demo count="100000":
    cargo run --release -p delivery-pipeline -- demo --count {{count}}

# Every test: unit, integration and fault (starts the test Kafka broker).
test *args:
    scripts/test.sh {{args}}

# Formatting, lints and dependency policy, as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo deny check licenses bans sources
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# What CI runs, from this checkout.
ci:
    bash .ci/run

# The end-to-end benchmark on the local Kafka, MariaDB and Redis (docs/PERFORMANCE.md).
bench count="1000000":
    scripts/kafka.sh start
    cargo run --release -p delivery-pipeline -- bench --count {{count}}

# Criterion benchmarks of the per-record hot paths.
bench-micro:
    cargo bench -p dp-benches

# Start / stop the Kafka-protocol broker the tests use (tansu on 127.0.0.1:9092).
kafka-start:
    scripts/kafka.sh start

kafka-stop:
    scripts/kafka.sh stop

# Start / stop the Oracle MySQL server the MySQL tests use (127.0.0.1:3307, under target/mysql).
mysql-start:
    scripts/mysql.sh start

mysql-stop:
    scripts/mysql.sh stop

# Print the DDL of the tables.
ddl:
    cargo run -q -p delivery-pipeline -- migrate --dry-run
