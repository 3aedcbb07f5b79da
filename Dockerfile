# syntax=docker/dockerfile:1
# The provider's image: a static (musl) binary on distroless/static, nothing else in it.
#
#   docker build --build-arg VERSION=0.2.0 -t <registry>/akeyless-csi-provider:0.2.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg VERSION=0.2.0 ...
#
# VERSION (semver, a leading "v" is dropped) becomes the crate version, so it is what
# `--version`, the gRPC Version call and the User-Agent report. Empty: Cargo.toml's version.
# TLS is rustls; no OpenSSL, no libc at run time.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
ARG VERSION=""
# musl-gcc for the C parts of the crypto library (aws-lc).
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
RUN set -eu; \
    if [ -n "${VERSION}" ]; then \
      v="${VERSION#v}"; \
      sed -i "0,/^version = \".*\"$/s//version = \"${v}\"/" Cargo.toml; \
      sed -i "/^name = \"akeyless-csi-provider\"$/{n;s/^version = .*/version = \"${v}\"/}" Cargo.lock; \
    fi; \
    target="$(uname -m)-unknown-linux-musl"; \
    export "CC_$(uname -m)_unknown_linux_musl=musl-gcc"; \
    cargo build --release --locked --target "${target}" --bin akeyless-csi-provider; \
    install -D -m 0755 "target/${target}/release/akeyless-csi-provider" /out/akeyless-csi-provider; \
    /out/akeyless-csi-provider --version

# distroless/static: CA certificates, /etc/passwd, tzdata; no shell, no package manager.
# The image's default user is nonroot (65532), right for `demo`, `emulator` and `mount`. The
# DaemonSet runs `serve` as uid 0 with every capability dropped, because the providers
# directory on the node is root's and shared with other providers (see docs/deploy.md).
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=""
LABEL org.opencontainers.image.title="akeyless-csi-provider" \
      org.opencontainers.image.description="Akeyless provider for the Kubernetes Secrets Store CSI driver" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/akeyless-csi-provider /usr/local/bin/akeyless-csi-provider
USER 65532:65532
EXPOSE 8098
ENTRYPOINT ["/usr/local/bin/akeyless-csi-provider"]
CMD ["serve", "--socket=/provider/akeyless.sock"]
