# The provider's image: the static binary, CA certificates and /etc/passwd, nothing else.
#
# Build it with scripts/image, which builds the binary (`cargo build --release`, statically
# linked), puts it in target/image/context with the files below, builds this file with buildah
# (or docker), tests the image and writes an OCI archive:
#
#   scripts/image
#   buildah push akeyless-csi-provider:0.1.0 docker://<registry>/akeyless-csi-provider:0.1.0
#
# The build context is target/image/context, never the source tree.
FROM scratch
LABEL org.opencontainers.image.title="akeyless-csi-provider" \
      org.opencontainers.image.description="Akeyless provider for the Kubernetes Secrets Store CSI driver" \
      org.opencontainers.image.licenses="Apache-2.0"
# rustls finds them here (rustls-native-certs' Debian path); without any, `serve` does not start.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY passwd /etc/passwd
COPY group /etc/group
COPY akeyless-csi-provider /usr/local/bin/akeyless-csi-provider
# nonroot by default, right for `demo`, `emulator`, `mount` and `check`. The DaemonSet runs
# `serve` as uid 0 with every capability dropped, because the providers directory on the node
# is root's and shared with other providers (see docs/deploy.md).
USER 65532:65532
EXPOSE 8098
ENTRYPOINT ["/usr/local/bin/akeyless-csi-provider"]
CMD ["serve", "--socket=/provider/akeyless.sock"]
