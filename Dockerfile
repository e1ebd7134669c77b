# syntax=docker/dockerfile:1
# Multi-stage build: the builder compiles the release binary (librdkafka is built from source by
# rdkafka-sys with TLS against OpenSSL, jemalloc and zstd too, hence make/gcc/zlib/libssl-dev); the runtime image
# holds the binary, OpenSSL, CA certificates (Kafka's default trust store) and an
# example config, and runs as an unprivileged user.
#
#   docker build -t delivery-pipeline .
#   docker run --rm -e DP_KAFKA__BROKERS=… -e DP_MYSQL__URL=… -e DP_REDIS__URL=… -p 9000:9000 delivery-pipeline

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends zlib1g-dev pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p delivery-pipeline \
 && cp target/release/delivery-pipeline /delivery-pipeline

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pipeline
COPY --from=build /delivery-pipeline /usr/local/bin/delivery-pipeline
COPY config/delivery-pipeline.example.toml /etc/delivery-pipeline/delivery-pipeline.toml
USER 10001:10001
# /livez, /readyz, /metrics
EXPOSE 9000
ENTRYPOINT ["/usr/local/bin/delivery-pipeline"]
CMD ["run", "--config", "/etc/delivery-pipeline/delivery-pipeline.toml"]
