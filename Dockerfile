# cedargate's container image: a static-glibc binary on a distroless base, running
# as a non-root user with a read-only root filesystem.
#
#   docker build -t cedargate:0.1.0 .                          # compiles from source
#   scripts/test.sh --release && \
#     docker build --build-arg BINARY=tested -t cedargate:0.1.0 .   # the binary the tests ran
#
# The image holds the shipped policies and configuration as defaults; in Kubernetes
# both come from ConfigMaps (deploy/kubernetes/).

ARG BINARY=build

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin cedargate \
 && cp target/release/cedargate /cedargate

# `scripts/test.sh --release` leaves the binary the end-to-end tests ran here.
FROM scratch AS tested
COPY target/release/cedargate /cedargate

# hadolint ignore=DL3006
FROM ${BINARY} AS binary

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=binary /cedargate /usr/local/bin/cedargate
COPY policies /etc/cedargate/policies
COPY deploy/kubernetes/cedargate.toml /etc/cedargate/config/cedargate.toml
USER 65532:65532
# gRPC (Envoy's ext_authz) and the admin listener (metrics, health, status).
EXPOSE 9191 9090
ENTRYPOINT ["/usr/local/bin/cedargate"]
CMD ["serve", "--config", "/etc/cedargate/config/cedargate.toml"]
