# Patrol's images for your own CI and registry: one file, two targets.
#
#   docker build --target operator -t <registry>/patrol-operator:<version> .
#   docker build --target webhook  -t <registry>/patrol-webhook:<version> .
#
# The runtime is distroless (glibc, libgcc, CA certificates, passwd entry 65532 "nonroot",
# no shell), which is what the binaries link against and what the chart's restricted
# securityContext expects: non-root, read-only root filesystem, no capabilities.
# `make images` builds the same layout without a Docker daemon (hack/images.sh).
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p patrol-operator -p patrol-webhook --bins \
 && install -D -m 0755 target/release/patrol-operator /out/patrol-operator \
 && install -D -m 0755 target/release/patrol-webhook /out/patrol-webhook

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.source="https://example.invalid/patrol" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532

FROM runtime AS operator
COPY --from=build /out/patrol-operator /usr/local/bin/patrol-operator
ENTRYPOINT ["/usr/local/bin/patrol-operator"]

FROM runtime AS webhook
COPY --from=build /out/patrol-webhook /usr/local/bin/patrol-webhook
ENTRYPOINT ["/usr/local/bin/patrol-webhook"]
