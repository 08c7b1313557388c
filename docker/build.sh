#!/usr/bin/env bash
# Builds the images docker-compose.yml uses, from static binaries: nothing is
# pulled, so it works with no registry.
#   leasekeeper/etcd:dev         etcd's server (go.etcd.io/etcd/server/v3/etcdmain)
#   leasekeeper/leasekeeper:dev  the sidecar (./cmd/leasekeeper)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "building static binaries in $out"
CGO_ENABLED=0 go build -trimpath -o "$out/etcd" ./integration/cmd/etcd
CGO_ENABLED=0 go build -trimpath -o "$out/leasekeeper" ./cmd/leasekeeper
docker build -q -t leasekeeper/etcd:dev -f docker/etcd.Dockerfile "$out"
docker build -q -t leasekeeper/leasekeeper:dev -f docker/leasekeeper.Dockerfile "$out"
echo "built leasekeeper/etcd:dev and leasekeeper/leasekeeper:dev"
