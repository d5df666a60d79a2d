# syntax=docker/dockerfile:1
# The `openledger` binary (every service, the engine, the operator, migrations) in a small
# non-root image. Not built on the development machines (they have no Docker):
#   docker build -t ghcr.io/openledger/openledger:0.1.0 .
# The GPU variant is Dockerfile.cuda. .cargo/config.toml builds for x86-64-v3 (AVX2/FMA);
# the engine picks wider kernels at run time when the CPU has them.

ARG RUST_VERSION=1.95

FROM --platform=linux/amd64 rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p openledger-cli \
    && install -D -m 0755 target/release/openledger /out/openledger \
    && mkdir -p /out/data

# glibc, libgcc, libstdc++ and CA certificates, nothing else (no shell).
FROM --platform=linux/amd64 gcr.io/distroless/cc-debian12
COPY --from=builder /out/openledger /usr/local/bin/openledger
# The data directory, writable by the image's user when no volume is mounted there.
COPY --from=builder --chown=10001:10001 /out/data /var/lib/openledger
# In a container every listener binds all interfaces; hf:// models are cached on the data
# directory (hf-hub reads HF_HOME), since the chart mounts the root file system read-only.
ENV OPENLEDGER_LISTEN_HOST=0.0.0.0 \
    OPENLEDGER_DATA_DIR=/var/lib/openledger \
    HF_HOME=/var/lib/openledger/huggingface
WORKDIR /var/lib/openledger
USER 10001:10001
# REST edge, gRPC of the five services, their ops HTTP and the operator's, an engine replica.
EXPOSE 8080 50051-50055 9091-9096 50060
ENTRYPOINT ["/usr/local/bin/openledger"]
CMD ["--help"]
