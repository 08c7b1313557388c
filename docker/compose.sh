#!/usr/bin/env bash
# Runs Docker Compose as whichever form this machine has: the "docker
# compose" plugin or the standalone docker-compose.
#   docker/compose.sh up -d
# The project is named "leasekeeper" unless COMPOSE_PROJECT_NAME says
# otherwise, so its network is leasekeeper_lk wherever the clone lives.
set -euo pipefail
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-leasekeeper}"
if docker compose version >/dev/null 2>&1; then
	exec docker compose "$@"
elif command -v docker-compose >/dev/null 2>&1; then
	exec docker-compose "$@"
fi
echo "compose.sh: neither 'docker compose' nor 'docker-compose' is available" >&2
exit 1
