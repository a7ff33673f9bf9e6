# syntax=docker/dockerfile:1
# Multi-stage build of the sluice agent image.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang-19 libbpf-dev linux-libc-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice-agent \
 && cp target/release/sluice /usr/local/bin/sluice

FROM debian:bookworm-slim
# nft for the nftables dataplane, conntrack for UDP flow cleanup, iproute2 for diagnostics.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables conntrack iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/sluice /usr/local/bin/sluice
ENTRYPOINT ["/usr/local/bin/sluice", "agent"]
