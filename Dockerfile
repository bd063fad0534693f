# syntax=docker/dockerfile:1
#
# opc-collector: the daemon only (no simulator, no demo), on a distroless
# base with no shell, running as a numeric non-root user with a read-only
# root filesystem. It writes only under /var/lib/opc-collector (mount the
# state volume there: spill, seq floor, PKI, dead letters).
#
#   docker build -t opc-collector:0.1.0 .
#   docker run --rm --read-only -v opc-state:/var/lib/opc-collector \
#     -v $PWD/my-config:/etc/opc-collector:ro opc-collector:0.1.0
#
# (my-config/ holds collector.yaml and the device files it names; without
# a mount the image's collector.yaml, config/default.yaml, names a device
# file that is not there and exits 2 at start, by design.)
#
# Expected size: about 45 MB (distroless cc, ~23 MB, plus the stripped
# binary, ~20 MB, and zlib). docs/operations.md has the deployment.

# The workspace's rust-version (Cargo.toml): the oldest the locked
# dependencies build with.
ARG RUST_VERSION=1.89
FROM rust:${RUST_VERSION}-bookworm AS build
# librdkafka is built from source by rdkafka-sys: a C toolchain (in the
# image), pkg-config, and the zlib and OpenSSL headers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p collector-daemon \
 && strip target/release/opc-collector \
 && mkdir -p /out/lib /out/state \
 && cp "$(dpkg -L zlib1g | grep 'libz.so.1$')" /out/lib/

# glibc, libgcc, OpenSSL 3 and CA certificates; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/lib/ /usr/lib/
COPY --from=build /src/target/release/opc-collector /usr/local/bin/opc-collector
COPY --from=build --chown=65532:65532 /out/state /var/lib/opc-collector
COPY config/default.yaml /etc/opc-collector/collector.yaml
USER 65532:65532
ENV STATE_DIR=/var/lib/opc-collector
VOLUME ["/var/lib/opc-collector"]
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/opc-collector", "--log-format", "json"]
CMD ["run", "--config", "/etc/opc-collector/collector.yaml"]
