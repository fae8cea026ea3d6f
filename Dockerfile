# syntax=docker/dockerfile:1.7
#
# Parley node image: a Rust builder stage, then a slim Debian runtime holding only the `parley`
# binary, CA certificates and a non-root user. See docs/deploy.md.
#
#   docker build -t parley:0.1.0 .
#   docker run --rm -p 3000:3000 -e PARLEY_JWT_SECRET=$(openssl rand -hex 32) \
#     -v parley-data:/var/lib/parley parley:0.1.0
#
# Needs BuildKit (the default builder since Docker 23 and in `docker compose` v2) for the cache
# mounts below; with the legacy builder set DOCKER_BUILDKIT=1.

# The workspace needs Rust 1.90+ (Cargo.toml `rust-version`). Builder and runtime use the same
# Debian release, so the binary's glibc matches the runtime's.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# aws-lc-sys (rustls, used by the ScyllaDB driver) builds with the C compiler of the rust image;
# forcing its cc builder makes a missing tool fail loudly instead of falling back to cmake.
ENV CARGO_TERM_COLOR=never \
    AWS_LC_SYS_CMAKE_BUILDER=0
COPY . .
# The registry and target directories are cache mounts: a rebuild after a source change only
# recompiles what changed. The binary is copied out because cache mounts are not in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p parley-node \
    && install -D -m 0755 target/release/parley /out/parley

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: TLS to ScyllaDB or other services without shipping a CA file. Versions are
# not pinned: the Debian release is, and its security updates should be picked up on rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid/gid (10001), so Kubernetes can verify runAsNonRoot and set fsGroup.
RUN groupadd --system --gid 10001 parley \
    && useradd --system --uid 10001 --gid parley --no-create-home \
       --home-dir /var/lib/parley --shell /usr/sbin/nologin parley \
    && install -d -o parley -g parley -m 0750 /var/lib/parley
COPY --from=builder /out/parley /usr/local/bin/parley

LABEL org.opencontainers.image.title="parley" \
      org.opencontainers.image.description="Parley: a brokerless, actor-model real-time messaging node" \
      org.opencontainers.image.licenses="Apache-2.0"

# Container defaults; a config file (PARLEY_CONFIG), other PARLEY_* variables or flags override
# them. The embedded history store lives under /var/lib/parley: mount a volume there. The JWT
# secret is NOT baked in: pass PARLEY_JWT_SECRET at run time (without it the node runs with the
# public development secret and says so in its log).
ENV PARLEY_LISTEN=0.0.0.0:3000 \
    PARLEY_DATA_DIR=/var/lib/parley
WORKDIR /var/lib/parley
USER 10001:10001
# 3000: HTTP and WebSocket. 7000: node-to-node traffic, used only when clustering is enabled
# (PARLEY_CLUSTER__LISTEN=0.0.0.0:7000, see docs/deploy.md); never publish it to clients.
EXPOSE 3000 7000

# SIGTERM (the default) makes the node leave its cluster (if any), close sessions with 1001 and
# drain within `shutdown_grace` (5 s): give `docker stop` at least ~15 s (Compose:
# stop_grace_period).
STOPSIGNAL SIGTERM

# The slim image has no curl or wget, and adding one only for this would grow the attack surface.
# bash (part of the base image) speaks enough HTTP through /dev/tcp: send GET /healthz, expect a
# 200 status line. The port follows PARLEY_LISTEN (3000 unless overridden in the environment).
# Kubernetes ignores HEALTHCHECK; it uses the probes in k8s/statefulset.yaml.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PARLEY_LISTEN##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["/usr/local/bin/parley"]
CMD ["serve"]
