# Multi-stage build: compile in the Rust image, run from a small Debian image as a non-root user.
FROM rust:1.95-slim-bookworm AS build
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
# Kubernetes should use its native gRPC probe (grpc.health.v1) on port 8080 instead.
ENTRYPOINT ["/usr/local/bin/iggy-gateway"]
