# The managedbot image: one static binary (controller, router and the
# commands), non-root, on a base with nothing else in it.
#
#   docker build -t ghcr.io/managedbot/managedbot:v0.1.0 .
#
# The machines this project is developed on have no container engine, so
# this file is not built in CI; `cargo build --release --target
# x86_64-unknown-linux-musl` is the same build without the container.

FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools cmake clang \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin managedbot \
 && cp target/x86_64-unknown-linux-musl/release/managedbot /managedbot

# distroless/static: CA certificates (for api.telegram.org), /etc/passwd with
# the nonroot user 65532, and nothing to run but our binary.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /managedbot /managedbot
USER 65532:65532
ENTRYPOINT ["/managedbot"]
