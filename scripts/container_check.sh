#!/usr/bin/env bash
# Container smoke test (docs/deployment.md "Without Docker: podman"): build the Dockerfile's `cpu` target
# with podman and run it as deployed, an API container and a worker container on a private Redis:
#
#   /readyz ok; POST /upscale gives the bytes the host gives (same image, seed and torch thread count);
#   both run as uid 10001; the image keeps its HEALTHCHECK (and `podman healthcheck run` passes);
#   `podman stop` (SIGTERM) of the worker with a job in hand: the job finishes (200) and it exits 0.
#
# Cached between runs: the debootstrap base image (scripts/container_base.sh), the wheel directory the
# build installs from (no index is reachable inside the build here: PIP_SOURCE), podman's layer cache.
#
#   scripts/container_check.sh        PYTHON (default .venv/bin/python): the host interpreter, with the
#                                     serve extra, that downloads the wheels and runs the host reference
#   RSD_CONTAINER_CACHE (default ~/.cache/rsd-container): where the wheel directory is kept
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
py="${PYTHON:-$repo/.venv/bin/python}"
cache="${RSD_CONTAINER_CACHE:-$HOME/.cache/rsd-container}"
base="localhost/rsd-python:3.11-bookworm"
image="localhost/rsd-serve:cpu-check"
prefix="rsd-check-$$"
seed=7
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

# Flags for this kind of host, each for a reason (docs/deployment.md "Without Docker: podman")
pm() { podman --runtime runc --cgroup-manager cgroupfs "$@"; }
limits=(--network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

say() { echo "container_check: $*"; }
fail() { echo "container_check: FAILED: $*" >&2; exit 1; }
# a podman command whose stderr goes to podman.log (the systemd timer noise below), shown if it fails
logged() { "$@" 2>>"$work/podman.log" || { tail -20 "$work/podman.log" >&2; fail "$*"; }; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
timings=()
timed() { timings+=("$1 $2 s${3:+ ($3)}"); say "$1: $2 s${3:+ ($3)}"; }

for tool in podman runc redis-server curl; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || fail "$tool is not installed (scripts/system_packages.sh installs it)"
done
[ -x "$py" ] || fail "no host Python at $py (make setup, or set PYTHON)"

work="$(mktemp -d)"
pids=()
cleanup() {
  pm rm -f -t 0 "$prefix-api" "$prefix-worker" >/dev/null 2>&1 || true
  for pid in "${pids[@]-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- base image and wheels ----------------------------------------------------------------------------
start="$(now)"
made="$(sh scripts/container_base.sh "$base")"
timed "base image" "$(since "$start")" "${made##* }"

start="$(now)"
wheels="$cache/wheels"
mkdir -p "$wheels"
torch_pin="$(sed -n 's/^TORCH_PIN := *//p' Makefile)"
base_python="$(pm run --rm "${limits[@]}" "$base" python -c 'import platform; print(platform.python_version())')"
stamp="$(cat pyproject.toml Makefile | sha256sum | cut -c1-16) $base_python"
if [ "$(cat "$wheels/.stamp" 2>/dev/null)" != "$stamp" ]; then
  # async-timeout: redis requires it below Python 3.11.3 (bookworm has 3.11.2), a marker pip evaluates
  # with the host's Python; setuptools: the project's build backend (the build has no index)
  "$py" -m pip download -q -d "$wheels" --only-binary :all: ".[serve]" "$torch_pin" "setuptools>=68" \
    "async-timeout>=4.0.3" >"$work/wheels.log" 2>&1 || { tail -20 "$work/wheels.log"; fail "pip download"; }
  echo "$stamp" >"$wheels/.stamp"
  timed wheels "$(since "$start")" "downloaded for Python $base_python"
else
  timed wheels "$(since "$start")" "cached"
fi

# --- build (one at a time on this host; the containers below run the built image by ID) ---------------
start="$(now)"
exec 9>"$cache/build.lock"
flock 9
previous="$(pm image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
pm build --format docker "${limits[@]}" -v "$wheels:/wheels:ro" \
  --build-arg PIP_SOURCE="--no-index --find-links /wheels" --build-arg PYTHON_IMAGE="$base" \
  --target cpu -t "$image" . >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; fail "podman build"; }
image_id="$(pm image inspect --format '{{.Id}}' "$image")"
if [ -n "$previous" ] && [ "$previous" != "$image_id" ]; then
  pm rmi "$previous" >/dev/null 2>&1 || true  # the last check's image: one kept, not one per source change
fi
flock -u 9
cached_steps="$(grep -c -- '--> Using cache' "$work/build.log" || true)"
timed build "$(since "$start")" "$cached_steps steps from the cache"

healthcheck="$(pm image inspect --format '{{json .Config.Healthcheck}}' "$image_id")"
case "$healthcheck" in
  *'/healthz'*) say "HEALTHCHECK in the image: $healthcheck" ;;
  *) fail "the built image has no HEALTHCHECK (podman build --format docker keeps it): $healthcheck" ;;
esac

# --- Redis, the host reference server, the two containers ----------------------------------------------
read -r redis_port api_port host_port metrics_port < <("$py" -c \
  'from loadtests.local_stack import free_port; print(*sorted({free_port() for _ in range(40)})[:4])')
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
redis_url="redis://127.0.0.1:$redis_port/0"
# the host: the same server in embedded mode (no Redis), one torch thread like the worker container
RSD_TORCH_THREADS=1 OMP_WAIT_POLICY=PASSIVE REDIS_URL="" \
  "$py" -m rsd_cli.main serve --host 127.0.0.1 --port "$host_port" >"$work/host.log" 2>&1 &
host_pid=$!
pids+=("$host_pid")

start="$(now)"
# podman runs HEALTHCHECKs on systemd timers: without systemd, run and stop log an error about the timer
# (harmless, kept in podman.log) and `podman healthcheck run` below runs the image's check once instead
common=(-d "${limits[@]}" -e REDIS_URL="$redis_url" -e RSD_REDIS_PREFIX="$prefix")
logged pm run "${common[@]}" --name "$prefix-worker" -e RSD_TORCH_THREADS=1 -e RSD_INSTANCE="$prefix-worker" \
  -e RSD_HEALTHCHECK_URL="http://127.0.0.1:$metrics_port/metrics" \
  "$image_id" worker --metrics-port "$metrics_port" >/dev/null
logged pm run "${common[@]}" --name "$prefix-api" -e RSD_INSTANCE="$prefix-api" \
  -e RSD_HEALTHCHECK_URL="http://127.0.0.1:$api_port/healthz" \
  "$image_id" api --host 127.0.0.1 --port "$api_port" >/dev/null

wait_ready() {  # url, seconds, container name or host:PID
  local deadline=$(($(date +%s) + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if [[ "$3" == host:* ]]; then
      kill -0 "${3#host:}" 2>/dev/null || { tail -30 "$work/host.log" >&2; fail "the host server exited"; }
    elif [ "$(pm inspect --format '{{.State.Running}}' "$3")" != true ]; then
      pm logs --tail 30 "$3" >&2
      fail "$3 exited before $1 answered"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || fail "$1 did not answer in $2 s"
    sleep 0.2
  done
}
wait_ready "http://127.0.0.1:$api_port/readyz" 180 "$prefix-api"
timed "start to ready" "$(since "$start")" "api /readyz 200 with a worker in Redis"
curl -fsS "http://127.0.0.1:$api_port/readyz" >"$work/readyz.json"
grep -q '"status": *"ok"' "$work/readyz.json" || fail "/readyz: $(cat "$work/readyz.json")"
for name in api worker; do
  pm healthcheck run "$prefix-$name" >/dev/null 2>>"$work/podman.log" \
    || fail "the image's HEALTHCHECK fails in the $name container"
done

for name in api worker; do
  uid="$(pm exec "$prefix-$name" id -u)"
  [ "$uid" = 10001 ] || fail "$name container runs as uid $uid, not 10001"
done
say "both containers run as uid 10001"

# --- the same bytes as the host -----------------------------------------------------------------------
"$py" - "$work" <<'EOF'
import sys
import numpy as np
from PIL import Image
yy, xx = np.mgrid[0:80, 0:96]
small = np.stack([128 + 100 * np.sin(xx / 5.0), 128 + 100 * np.cos(yy / 4.0), (xx * 3 + yy) % 256], -1)
Image.fromarray(small.clip(0, 255).astype(np.uint8)).save(f"{sys.argv[1]}/small.png")
# enough tiles (9, ~5 s on one thread) that the worker is still at it when it is stopped
Image.fromarray(np.tile(small.clip(0, 255).astype(np.uint8), (4, 4, 1))[:176, :176]).save(f"{sys.argv[1]}/big.png")
EOF
upscale() {  # base url, output file: the HTTP status
  curl -sS -o "$2" -w '%{http_code}' -F image=@"$work/small.png" "$1/upscale?seed=$seed&format=png"
}
wait_ready "http://127.0.0.1:$host_port/readyz" 120 "host:$host_pid"
status="$(upscale "http://127.0.0.1:$api_port" "$work/container.png")"
[ "$status" = 200 ] || fail "POST /upscale to the containers: $status $(head -c 300 "$work/container.png")"
[ "$(upscale "http://127.0.0.1:$host_port" "$work/host.png")" = 200 ] || fail "POST /upscale to the host server"
cmp -s "$work/container.png" "$work/host.png" || fail "the containers' image differs from the host's (seed $seed)"
say "POST /upscale: the same $(stat -c %s "$work/host.png") bytes as the host (seed $seed, 1 torch thread)"

# --- SIGTERM with a job in hand -----------------------------------------------------------------------
api="http://127.0.0.1:$api_port"
job="$(curl -fsS -F image=@"$work/big.png" "$api/jobs?seed=$seed&format=png" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
job_field() { curl -fsS "$api/jobs/$job" | "$py" -c "import json,sys; print(json.load(sys.stdin)$1)"; }
deadline=$(($(date +%s) + 60))
until [ "$(job_field '["status"]')" = running ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "job $job did not start in 60 s"
  sleep 0.1
done
progress="$(curl -fsS "$api/jobs/$job" | "$py" -c 'import json,sys; j=json.load(sys.stdin); print(j["tiles_done"], "of", j["tiles_total"])')"
start="$(now)"
logged pm stop -t 120 "$prefix-worker" >/dev/null
stop_s="$(since "$start")"
exit_code="$(pm inspect --format '{{.State.ExitCode}}' "$prefix-worker")"
[ "$exit_code" = 0 ] || { pm logs --tail 30 "$prefix-worker" >&2; fail "the worker exited $exit_code after SIGTERM"; }
[ "$(job_field '["status"]')" = done ] || fail "job $job is $(job_field '["status"]') after the worker stopped"
status="$(curl -sS -o "$work/big_x4.png" -w '%{http_code}' "$api/jobs/$job/result")"
[ "$status" = 200 ] || fail "GET /jobs/$job/result: $status"
timed "stop worker" "$stop_s" "SIGTERM at $progress tiles: job finished, 200, exit 0"

start="$(now)"
logged pm stop -t 60 "$prefix-api" >/dev/null
exit_code="$(pm inspect --format '{{.State.ExitCode}}' "$prefix-api")"
[ "$exit_code" = 0 ] || fail "the API exited $exit_code after SIGTERM"
timed "stop api" "$(since "$start")" "exit 0"

say "timings: $(IFS=';'; echo "${timings[*]}" | sed 's/;/; /g')"
say ok
