#!/usr/bin/env bash
# Build the dispatch-emu image without network access during the build: the project
# and its dependencies become wheels here (`pip wheel`), copied into a throw-away
# build context with deploy/Dockerfile.
#   deploy/build-image.sh [IMAGE]          (default: $DISPATCH_IMAGE or dispatch-emu:latest)
#   BASE_IMAGE=dispatch-emu-base:bookworm deploy/build-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."
image="${1:-${DISPATCH_IMAGE:-dispatch-emu:latest}}"
base="${BASE_IMAGE:-python:3.11-slim}"
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
ctx="$(mktemp -d "${TMPDIR:-/tmp}/dispatch-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
echo "== wheels for $image (pip wheel, on the host)"
"$python" -m pip wheel -q --wheel-dir "$ctx/wheels" . 
cp deploy/Dockerfile "$ctx/Dockerfile"
echo "== docker build $image on $base"
docker build -q --build-arg "BASE_IMAGE=$base" -t "$image" "$ctx"
