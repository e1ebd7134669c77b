#!/usr/bin/env bash
# Runs every test: unit tests (no services), then integration and fault tests against the
# real broker and Oracle MySQL (both started here), MariaDB on 127.0.0.1:3306 and Redis on
# 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/kafka.sh start
# Python packages of the tests (pinned): kafka-python and its codec libraries, for the
# independent-producer tests; moto, the S3 server of broker_restart.rs's durable broker; and
# confluent-kafka with its Avro, Protobuf and JSON Schema serializers (schema_registry.rs).
# A no-op when installed; Debian's own python3 needs
# --break-system-packages (PEP 668).
py_req=bins/delivery-pipeline/tests/support/requirements.txt
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -r "$py_req" 2>/dev/null ||
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --break-system-packages -r "$py_req"
python3 -c 'import kafka, kafka.codec as c; assert c.has_snappy() and c.has_lz4() and c.has_zstd(); print("kafka-python", kafka.__version__)'
python3 -c 'import confluent_kafka.schema_registry.avro, confluent_kafka.schema_registry.protobuf, confluent_kafka.schema_registry.json_schema as j; print("confluent-kafka", j.__name__ and __import__("confluent_kafka").version()[0])'
scripts/mysql.sh start
export TEST_MYSQL_URL="${TEST_MYSQL_URL:-$(scripts/mysql.sh url)}"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets "$@"
else
  cargo test --workspace --all-targets "$@"
fi
cargo test --workspace --doc --quiet
