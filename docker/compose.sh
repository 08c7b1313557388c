#!/usr/bin/env bash
# Runs Docker Compose as whichever form this machine has: the "docker
# compose" plugin or the standalone docker-compose.
#   docker/compose.sh up -d
set -euo pipefail
if docker compose version >/dev/null 2>&1; then
	exec docker compose "$@"
elif command -v docker-compose >/dev/null 2>&1; then
	exec docker-compose "$@"
fi
echo "compose.sh: neither 'docker compose' nor 'docker-compose' is available" >&2
exit 1
