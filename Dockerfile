# docker build -t gateway . && docker run -p 8080:8080 -p 9901:9901 -v $PWD/gateway.toml:/etc/gateway/gateway.toml gateway
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# etcd-client compiles etcd's .proto files at build time.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p gateway && strip target/release/gateway

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home gateway
COPY --from=build /src/target/release/gateway /usr/local/bin/gateway
COPY gateway.toml /etc/gateway/gateway.toml
USER gateway
ENV GATEWAY_CONFIG=/etc/gateway/gateway.toml
EXPOSE 8080 9901
# In a container, listen on all interfaces: set server.listen = "0.0.0.0:8080" and
# admin.listen as needed in the mounted gateway.toml.
HEALTHCHECK --interval=10s --timeout=2s --retries=3 CMD curl -fsS http://127.0.0.1:9901/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/gateway", "--log-format", "json"]
CMD ["run"]
