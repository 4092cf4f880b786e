# Multi-stage build: compile in the Rust image, run from a small Debian image as a non-root user.
FROM rust:1.95-slim-bookworm AS build
# jemalloc's build runs make.
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
RUN cargo build --release --locked --bin iggy-gateway

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/iggy-gateway --create-home gateway
COPY --from=build /src/target/release/iggy-gateway /usr/local/bin/iggy-gateway
USER gateway
ENV HOST=0.0.0.0 \
    PORT=8080 \
    DATA_DIR=/var/lib/iggy-gateway/data
EXPOSE 8080
VOLUME ["/var/lib/iggy-gateway"]
# Probes: Kubernetes' native gRPC probe on port 8080 (service "liveness" for liveness, "" for
# readiness); see deploy/kubernetes.yaml. Docker's HEALTHCHECK is left out: the image has no
# HTTP client, and orchestrators probe from outside.
ENTRYPOINT ["/usr/local/bin/iggy-gateway"]
