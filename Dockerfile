# syntax=docker/dockerfile:1
# The sluice agent image, where a registry can be pulled from (docker/podman build .).
# Without one, `cargo xtask image` builds the same image from Debian packages (see
# docs/deploy.md); both install the runtime packages listed on the `apt-get install` line of
# the second stage (xtask checks they agree).
FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang-19 libbpf-dev linux-libc-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice-agent \
 && cp target/release/sluice /usr/local/bin/sluice \
 && strip --strip-debug /usr/local/bin/sluice

FROM docker.io/library/debian:bookworm-slim
# nft (nftables dataplane), conntrack (UDP flow cleanup), iptables (--cleanup-kube-proxy),
# iproute2 (diagnostics), ca-certificates (the API server's CA comes from the service account).
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables conntrack iptables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/sluice /usr/local/bin/sluice
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["agent"]
