#!/usr/bin/env bash
# The test cluster (deploy/compose.yaml) on this machine, with no registry needed.
#   deploy/cluster.sh up       engine (installed/started if need be), images, cluster; waits
#                              until every node has joined Ray
#   deploy/cluster.sh down     removes every container, network and volume of the cluster;
#                              stops dockerd if `up` started it
#   deploy/cluster.sh check    on a running cluster: the quickstart and examples/cluster.py
#                              from the driver on the head
#   deploy/cluster.sh chaos    up (Ray's node-death timeout shortened), the cluster-scale
#                              chaos suite (chaos/cluster), down
#   deploy/cluster.sh ci       chaos as CI runs it (.ci/run); available: can Docker run here?
#   deploy/cluster.sh build    only the images;  deploy/cluster.sh compose ARGS...  compose
# (./dev cluster up | down | check | chaos calls this.)
#
# Images are keyed by their inputs: raycg-base:<hash> (debootstrap of Debian 12 with
# python3, `docker import`) and raycg:<hash> (deploy/Dockerfile on that base, with wheels
# built here from constraints.txt). An image whose tag exists is not rebuilt, so `up`
# with nothing changed builds nothing. RAYCG_BASE=python:3.11-bookworm builds on a
# registry's image instead (and lets pip reach PyPI).
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) stops the script too
cd "$(dirname "$0")/.."
PROJECT=${RAYCG_PROJECT:-raycg}
STATE=deploy/.state
PY=${RAYCG_PYTHON:-.venv/bin/python}
EXTRAS=${RAYCG_EXTRAS:-}
BASE_PACKAGES=python3,python3-venv,ca-certificates,procps,iproute2
JOIN_TIMEOUT_S=${RAYCG_JOIN_TIMEOUT_S:-180}
mkdir -p "$STATE"

log() { echo "== cluster: $*" >&2; }
die() { echo "cluster: $*" >&2; exit 1; }
hash_of() { sha256sum | cut -c1-12; }
# Content of files under the given paths, caches and build outputs left out.
tree_hash() {
  find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.so' ! -path '*/build/*' \
    ! -path '*.egg-info/*' ! -name '.stamp' -print0 | sort -z | xargs -0 sha256sum | hash_of
}

# RAYCG_COMPOSE_FILES: the compose files, colon-separated (chaos adds compose.chaos.yaml).
compose() {
  local files=() f
  IFS=: read -ra f <<<"${RAYCG_COMPOSE_FILES:-deploy/compose.yaml}"
  for f in "${f[@]}"; do files+=(-f "$f"); done
  if docker compose version >/dev/null 2>&1; then
    docker compose -p "$PROJECT" "${files[@]}" "$@"
  elif command -v docker-compose >/dev/null; then
    docker-compose -p "$PROJECT" "${files[@]}" "$@"
  else
    die "neither 'docker compose' (v2) nor 'docker-compose' (v1) is installed"
  fi
}

# --- the engine -----------------------------------------------------------------------
install_engine() {
  [[ $(id -u) == 0 ]] || die "Docker is not installed, and installing it needs root (apt-get)"
  command -v apt-get >/dev/null || die "Docker is not installed and there is no apt-get here"
  log "installing docker.io, docker-compose, debootstrap with apt"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose debootstrap >/dev/null
}

engine_up() {
  if docker info >/dev/null 2>&1; then return; fi
  command -v dockerd >/dev/null || install_engine
  command -v debootstrap >/dev/null || [[ -n ${RAYCG_BASE:-} ]] || install_engine
  [[ $(id -u) == 0 ]] || die "the Docker engine is not running, and starting it needs root"
  log "starting dockerd (log: $STATE/dockerd.log)"
  # Inside a container there is no systemd: start it ourselves, and remember that we did,
  # so that `down` stops it again. RAYCG_DOCKERD_FLAGS: e.g. --storage-driver=vfs where
  # overlay2 is refused.
  # shellcheck disable=SC2086
  setsid dockerd ${RAYCG_DOCKERD_FLAGS:-} >"$STATE/dockerd.log" 2>&1 </dev/null &
  echo $! >"$STATE/dockerd.pid"
  for _ in $(seq 120); do
    docker info >/dev/null 2>&1 && return
    kill -0 "$(cat "$STATE/dockerd.pid")" 2>/dev/null || { tail -20 "$STATE/dockerd.log" >&2; die "dockerd exited"; }
    sleep 0.5
  done
  die "dockerd did not answer within 60 s (log: $STATE/dockerd.log)"
}

engine_down() {
  [[ -f $STATE/dockerd.pid ]] || return 0
  local pid; pid=$(cat "$STATE/dockerd.pid")
  # Only that very process: a stale pid file may name a process that is not ours.
  if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]]; then
    log "stopping the dockerd that 'up' started (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$STATE/dockerd.pid"
}

# --- the images -----------------------------------------------------------------------
base_image() {
  if [[ -n ${RAYCG_BASE:-} ]]; then echo "$RAYCG_BASE"; return; fi
  local tag; tag="raycg-base:bookworm-$(echo "$BASE_PACKAGES" | hash_of)"
  if ! docker image inspect "$tag" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || install_engine
    local root="$STATE/rootfs"
    rm -rf "$root"
    log "debootstrap of Debian 12 with $BASE_PACKAGES (a few minutes, once)"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$root" >"$STATE/debootstrap.log" 2>&1 \
      || { tail -20 "$STATE/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import - "$tag" >/dev/null
    rm -rf "$root"
  fi
  echo "$tag"
}

# Wheels of raycg's dependencies and of raycg itself, for an image built offline.
wheels() {
  local deps=deploy/wheels/deps want
  want=$( (cat constraints.txt pyproject.toml; echo "$EXTRAS") | hash_of)
  if [[ "$(cat $deps/.stamp 2>/dev/null)" != "$want" ]]; then
    log "pip wheel: raycg's pinned dependencies (extras: $EXTRAS)"
    rm -f $deps/*.whl
    "$PY" deploy/requirements.py "$EXTRAS" >"$STATE/requirements.txt"
    "$PY" -m pip wheel -q -c constraints.txt -w $deps -r "$STATE/requirements.txt" >"$STATE/wheel.log" 2>&1 \
      || { cat "$STATE/wheel.log" >&2; die "pip wheel failed"; }
    echo "$want" >$deps/.stamp
  fi
  local own=deploy/wheels/raycg
  want=$(tree_hash setup.py pyproject.toml README.md src packages proto)
  if [[ "$(cat $own/.stamp 2>/dev/null)" != "$want" ]]; then
    log "pip wheel: raycg"
    rm -f $own/*.whl
    "$PY" -m pip wheel -q --no-deps -w $own . >"$STATE/wheel.log" 2>&1 || { cat "$STATE/wheel.log" >&2; exit 1; }
    echo "$want" >$own/.stamp
  fi
}

image() {
  local base offline="" inputs tag
  base=$(base_image)
  if [[ -z ${RAYCG_BASE:-} ]]; then offline=--no-index; wheels; fi
  inputs=$( (docker image inspect -f '{{.Id}}' "$base" 2>/dev/null || echo "$base"
    echo "$offline $EXTRAS"; cat deploy/Dockerfile .dockerignore
    cat deploy/wheels/*/.stamp 2>/dev/null; tree_hash examples chaos deploy/*.py) | hash_of)
  tag="raycg:$inputs"
  if ! docker image inspect "$tag" >/dev/null 2>&1; then
    # Never let the build pull: without a registry that is traffic to an address not ours.
    docker image inspect "$base" >/dev/null 2>&1 || [[ -n ${RAYCG_PULL:-} ]] \
      || die "base image $base is not here (docker pull it, or set RAYCG_PULL=1)"
    log "docker build $tag on $base"
    docker build -q -f deploy/Dockerfile --build-arg BASE="$base" --build-arg PIP_OFFLINE="$offline" \
      --build-arg RAYCG_EXTRAS="$EXTRAS" -t "$tag" . >"$STATE/build.log" 2>&1 \
      || { tail -30 "$STATE/build.log" >&2; die "docker build failed (log: $STATE/build.log)"; }
    # Older builds go (their layers with them), but for those a container still uses.
    docker images raycg --format '{{.Repository}}:{{.Tag}}' | grep -vxF "$tag" \
      | xargs -r docker rmi >/dev/null 2>&1 || true
  fi
  echo "$tag"
}

# --- the cluster ----------------------------------------------------------------------
wait_joined() {
  local want; want=$(compose ps -q | wc -l)
  log "waiting for $want nodes to join (at most $JOIN_TIMEOUT_S s)"
  local deadline=$((SECONDS + JOIN_TIMEOUT_S))
  until compose exec -T head python -m deploy.wait_joined "$want" "$((deadline - SECONDS))" 2>"$STATE/wait.log"; do
    ((SECONDS < deadline)) || { tail -5 "$STATE/wait.log" >&2; compose logs --tail 20 >&2; die "not every node joined"; }
    sleep 1
  done
}

up() {
  local t0=$SECONDS
  engine_up
  RAYCG_IMAGE=$(image)
  export RAYCG_IMAGE
  echo "$RAYCG_IMAGE" >"$STATE/image"
  log "starting head and workers ($RAYCG_IMAGE)"
  compose up -d --no-build "$@" >"$STATE/up.log" 2>&1 || { cat "$STATE/up.log" >&2; die "compose up failed"; }
  wait_joined
  log "up in $((SECONDS - t0)) s"
  compose exec -T head ray status 2>/dev/null | sed -n '/Node status/,/Pending/p'
}

down() {
  if docker info >/dev/null 2>&1; then
    export RAYCG_IMAGE=${RAYCG_IMAGE:-$(cat "$STATE/image" 2>/dev/null || echo raycg:latest)}
    compose --profile gpu down -v --remove-orphans --timeout 5 >"$STATE/down.log" 2>&1 \
      || { cat "$STATE/down.log" >&2; die "compose down failed"; }
    local left
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"
      docker network ls -q --filter "label=com.docker.compose.project=$PROJECT"
      docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
    [[ -z $left ]] || die "left behind after down: $left"
    log "down: no container, network or volume of '$PROJECT' left"
  fi
  [[ -n ${RAYCG_KEEP_DOCKERD:-} ]] || engine_down
}

# Ray's INFO log lines out of a driver's output.
quiet() { sed '/^[0-9-]* [0-9:,]*[[:space:]]INFO /d'; }

check() {
  export RAYCG_IMAGE=${RAYCG_IMAGE:-$(cat "$STATE/image")}
  local n=${RAYCG_CHECK_N:-300} out
  # A graph across the nodes needs raycg's cross-node channel; a raycg without it refuses
  # the graph (at compile or at setup), naming the edge. Then the quickstart runs on a one-node Ray in
  # a container of its own (no network), and a graph within each node, driven from it.
  if out=$(compose exec -T head python examples/cluster.py --n "$n" 2>&1); then
    echo "$out" | quiet
    compose exec -T head python examples/quickstart.py --n "$n" 2>&1 | quiet
  elif grep -q -E 'cross-node edges are not supported|no cross-node \(gRPC\) channel yet' <<<"$out"; then
    log "this raycg refuses graphs across nodes: the quickstart on the head's own Ray, a graph within each node"
    docker run --rm --network none --shm-size 1g "$RAYCG_IMAGE" python examples/quickstart.py --n "$n" 2>&1 \
      | quiet
    local node
    for node in $(compose ps --services | grep -v '^g[0-9]'); do
      compose exec -T "$node" python examples/cluster.py --local --n "$n" 2>&1 | quiet
    done
  else
    echo "$out" >&2
    die "examples/cluster.py failed on the cluster"
  fi
}

# The cluster-scale chaos suite (chaos/cluster) on a fresh cluster with Ray's shortened
# node-death timeout; the cluster is torn down after, pass or fail.
chaos() {
  export RAYCG_COMPOSE_FILES=deploy/compose.yaml:deploy/compose.chaos.yaml
  trap down EXIT
  up
  RAYCG_CLUSTER=1 "$PY" -m pytest -p no:xdist -m cluster chaos/cluster -v -s "$@"
}

# What CI runs (.ci/run): the check and every scenario, each with 2 fresh seeds
# (RAYCG_CLUSTER_SCENARIOS=a,b picks some; docs/cluster.md says how long it takes).
ci() { CHAOS_SEEDS=${CHAOS_SEEDS:-2} chaos "$@"; }

# Exit 0 if the engine runs here or can be started (or installed); else say why.
available() {
  if docker info >/dev/null 2>&1; then return 0; fi
  if [[ $(id -u) != 0 ]]; then echo "the Docker engine is not running and starting it needs root"; return 1; fi
  if command -v dockerd >/dev/null; then return 0; fi
  if command -v apt-get >/dev/null; then
    apt-cache show docker.io >/dev/null 2>&1 || apt-get update -q >/dev/null 2>&1 || true
    apt-cache show docker.io >/dev/null 2>&1 && return 0
  fi
  echo "no Docker engine here, and apt cannot install docker.io"
  return 1
}

cmd=${1:-}; shift || true
case "$cmd" in
  up) up "$@" ;;
  down) down ;;
  check) check ;;
  chaos) chaos "$@" ;;
  ci) ci "$@" ;;
  available) available ;;
  build) engine_up; image ;;
  compose) export RAYCG_IMAGE=${RAYCG_IMAGE:-$(cat "$STATE/image")}; compose "$@" ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
