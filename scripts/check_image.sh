#!/usr/bin/env bash
# Build the server image from deploy/Dockerfile with podman and check it as a platform engineer would:
# non-root, read-only root filesystem, bundle mounted read-only; health SERVING, a Score over gRPC from the host,
# /metrics, `podman healthcheck run`, SIGTERM under load drains and exits 0 within the grace; image size by layer.
#
#   sudo bash scripts/check_image.sh            (Debian, as root; 15 GB of free disk; 6-10 minutes)
#   KEEP=1 sudo bash scripts/check_image.sh     keep the images afterwards (the base is reused by the next run)
#   BARE_BASE=1 sudo bash scripts/check_image.sh    a base without Python, as nvidia/cuda's are: the Dockerfile's
#                                               apt path installs the distribution's python3 and python3-venv
#
# Needs scripts/setup.sh to have run (the host side trains the bundle and is the gRPC client).
# What such a VM needs, stated rather than hidden (a private containers.conf via CONTAINERS_CONF, the machine's
# own configuration is not touched):
#   - runtime runc: the runtime known to work on these VMs;
#   - default_ulimits nofile=20000, nproc=32768: the VM's hard limits are below podman's defaults;
#   - cgroup_manager cgroupfs, events_logger file: no systemd session;
#   - no registry is reachable, so the base is a Debian minbase made by mmdebstrap and `podman import`ed;
#   - pip inside the build uses this machine's package sources: its pip settings become the build secret `pipconf`,
#     its CA the secret `cacert`, and the local wheel folders / file:// indexes they name are mounted read-only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" -eq 0 ] || { echo "check_image: run as root (podman and mmdebstrap need it)" >&2; exit 2; }
[ -x .venv/bin/detector ] || { echo "check_image: run scripts/setup.sh first" >&2; exit 2; }

TAG=localhost/vae-detector:check
BASE_PACKAGES=python3,python3-venv,ca-certificates
BASE_TAG=localhost/vae-detector-base:bookworm
if [ "${BARE_BASE:-0}" = 1 ]; then BASE_PACKAGES=ca-certificates; BASE_TAG=localhost/vae-detector-base:bookworm-bare; fi
NAME="vae-detector-check-$$"
WORK="$(mktemp -d)"
GRACE_S=20
STOP_TIMEOUT_S=30
t_start=$(date +%s)
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
seconds_since() { local ms=$(( $(now_ms) - $1 )); printf '%d.%d' $(( ms / 1000 )) $(( ms % 1000 / 100 )); }
say() { printf 'check_image: %s\n' "$*"; }
fail() { printf 'check_image: FAIL: %s\n' "$*" >&2; podman logs "$NAME" 2>&1 | tail -20 >&2 || true; exit 1; }
cleanup() {
    podman rm -f "$NAME" >/dev/null 2>&1 || true
    if [ "${KEEP:-0}" != 1 ]; then
        podman rmi -f "$TAG" "$BASE_TAG" >/dev/null 2>&1 || true
        if [ -f "$WORK/images.before" ]; then  # the build's intermediate layers, and nothing that was there before
            podman images -aq --no-trunc | sort | comm -13 "$WORK/images.before" - | xargs -r podman rmi -f >/dev/null 2>&1 || true
        fi
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# ---------------------------------------------------------------- tools and the VM's workarounds
need=()
for tool in podman:podman runc:runc mmdebstrap:mmdebstrap newuidmap:uidmap curl:curl; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cat > "$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"
storage="$(podman info --format '{{.Store.GraphRoot}}')"
mkdir -p "$storage"
free_gb=$(( $(df --output=avail -k "$storage" | tail -1) / 1048576 ))
[ "$free_gb" -ge 15 ] || { echo "check_image: $free_gb GB free under $storage; building needs 15 (the image, once as a container and once committed)" >&2; exit 2; }

# ---------------------------------------------------------------- base image (Debian bookworm: Python 3.11)
if ! podman image exists "$BASE_TAG"; then
    say "building the base with mmdebstrap (minbase + $BASE_PACKAGES)"
    mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
        --aptopt='Acquire::Check-Valid-Until "false"' bookworm "$WORK/base.tar"
    podman import --change 'CMD ["/bin/bash"]' "$WORK/base.tar" "$BASE_TAG" >/dev/null
    rm -f "$WORK/base.tar"
fi

# ---------------------------------------------------------------- this machine's package sources for pip
PIP_SETTINGS="$(.venv/bin/python -m pip config list 2>/dev/null | sed -n "s/^global\.\([a-z-]*\)='\(.*\)'$/\1 \2/p")"
CA=""
mounts=()
{
    echo "[global]"
    while read -r key value; do
        [ -n "$key" ] || continue
        if [ "$key" = cert ]; then CA="$value"; echo "cert = /run/secrets/cacert"; continue; fi
        echo "$key = $value"
        for word in $value; do  # local folders and file:// indexes (with the files beside them) the settings name
            path="${word#file://}"
            [ "${path#/}" != "$path" ] || continue
            if [ "$path" != "$word" ] || [ ! -d "$path" ]; then path="$(dirname "$path")"; fi
            case " ${mounts[*]-} " in *" $path:$path:ro "*) ;; *) mounts+=(-v "$path:$path:ro") ;; esac
        done
    done <<< "$PIP_SETTINGS"
} > "$WORK/pip.conf"
secrets=(--secret "id=pipconf,src=$WORK/pip.conf")
[ -z "$CA" ] || secrets+=(--secret "id=cacert,src=$CA")
say "pip settings for the build: $(grep -c = "$WORK/pip.conf") (mounted: ${mounts[*]:-none})"

# ---------------------------------------------------------------- build
t0=$(date +%s)
podman images -aq --no-trunc | sort > "$WORK/images.before"
podman build --quiet --format docker --force-rm -f deploy/Dockerfile -t "$TAG" --build-arg "BASE=$BASE_TAG" \
    "${secrets[@]}" "${mounts[@]}" . >/dev/null
build_s=$(( $(date +%s) - t0 ))
[ "$(podman image inspect -f '{{.Config.User}}' "$TAG")" = 10001 ] || fail "image does not run as uid 10001"
podman image inspect -f '{{.Config.Healthcheck}}' "$TAG" | grep -q health || fail "HEALTHCHECK missing (OCI format?)"
[ "$(podman image inspect -f '{{.Config.StopSignal}}' "$TAG")" = SIGTERM ] || fail "STOPSIGNAL missing"
say "built $TAG in ${build_s}s"

# ---------------------------------------------------------------- a tiny bundle, written under umask 022
mkdir -p "$WORK/models"
.venv/bin/python - "$WORK/bars.npz" <<'EOF'
import sys
import numpy as np
from detector.data.synthetic import bars
np.savez(sys.argv[1], x=bars(2000, size=16, seed=1)[:, 0])
EOF
(umask 022 && .venv/bin/detector --quiet train --data "$WORK/bars.npz" --out "$WORK/models/current" --epochs 2 \
    --device cpu >/dev/null 2>&1)
say "trained a tiny bundle (16x16 bars, 2 epochs)"

# ---------------------------------------------------------------- run: non-root, read-only, bundle read-only
free_port() { .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GRPC_PORT=$(free_port); METRICS_PORT=$(free_port)
t0=$(now_ms)
# Without systemd podman cannot schedule the periodic check: it logs "unable to get systemd connection" (harmless,
# also with --health-interval=disable on podman 4.3); the HEALTHCHECK stays, and `podman healthcheck run` runs it.
podman run -d --name "$NAME" --health-interval=disable --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
    -v "$WORK/models:/models:ro" -p "127.0.0.1:$GRPC_PORT:50051" -p "127.0.0.1:$METRICS_PORT:9090" "$TAG" >/dev/null
until .venv/bin/detector health --target "127.0.0.1:$GRPC_PORT" >/dev/null 2>&1; do
    [ "$(podman inspect -f '{{.State.Running}}' "$NAME")" = true ] || fail "container exited before SERVING"
    [ $(( $(now_ms) - t0 )) -lt 120000 ] || fail "not SERVING within 120 s"
    sleep 0.2
done
serving_s=$(seconds_since "$t0")
say "SERVING ${serving_s}s after podman run"
[ "$(podman exec "$NAME" id -u)" = 10001 ] || fail "server not running as uid 10001"
podman exec "$NAME" touch /app/x 2>/dev/null && fail "root filesystem is writable"

.venv/bin/detector --quiet score --server "127.0.0.1:$GRPC_PORT" --data "$WORK/bars.npz" --out "$WORK/scores.csv"
rows=$(( $(wc -l < "$WORK/scores.csv") - 1 ))
[ "$rows" = 2000 ] || fail "Score over gRPC returned $rows rows, sent 2000"
say "Score over gRPC from the host: $rows rows"
curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" > "$WORK/metrics.txt"
grep -Eq '^detector_samples_scored_total\{.*\} 2000(\.0)?$' "$WORK/metrics.txt" || fail "/metrics does not count the 2000 samples"
say "/metrics: $(grep -c '^detector_' "$WORK/metrics.txt") detector_* series, 2000 samples counted"
podman healthcheck run "$NAME" >/dev/null || fail "podman healthcheck run"
say "podman healthcheck run: healthy"

# ---------------------------------------------------------------- SIGTERM under load
cat > "$WORK/load.py" <<'EOF'
import json, sys
import numpy as np
from detector.bench.loadgen import load
if __name__ == "__main__":  # loadgen's client processes are spawned: they import this file again
    x = np.load(sys.argv[2])["x"][:, None]
    json.dump(load(sys.argv[1], x, seconds=12, batch=8, clients=16, procs=2, timeout=30), open(sys.argv[3], "w"))
EOF
.venv/bin/python "$WORK/load.py" "127.0.0.1:$GRPC_PORT" "$WORK/bars.npz" "$WORK/load.json" &
load_pid=$!
sleep 6
t0=$(now_ms)
podman stop --time "$STOP_TIMEOUT_S" "$NAME" >/dev/null
stop_ms=$(( $(now_ms) - t0 )); stop_s=$(seconds_since "$t0")
wait "$load_pid"
code=$(podman inspect -f '{{.State.ExitCode}}' "$NAME")
podman logs "$NAME" 2>&1 | grep -q stopped || fail "server log has no 'stopped' line"
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
[ "$stop_ms" -lt $(( GRACE_S * 1000 )) ] || fail "SIGTERM took ${stop_s}s, grace is ${GRACE_S}s"
load_summary=$(.venv/bin/python -c "
import json, sys; r = json.load(open('$WORK/load.json')); c = r['codes']
lost = sum(v for k, v in c.items() if k not in ('OK', 'UNAVAILABLE')) + r['bad']
print(f\"{r['requests']} requests: {r['ok']} answered, {c.get('UNAVAILABLE', 0)} refused after SIGTERM (UNAVAILABLE), {lost} lost\")
sys.exit(lost > 0)") || fail "requests lost at SIGTERM: $load_summary"
say "SIGTERM under load (16 clients): exit code 0 after ${stop_s}s; $load_summary"

# ---------------------------------------------------------------- size
size_mb=$(( $(podman image inspect -f '{{.Size}}' "$TAG") / 1000000 ))
say "image size: ${size_mb} MB; layers (newest first):"
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$TAG" | grep -v '^0 B' | cut -c1-150 | sed 's/^/    /' || true
inside() { podman run --rm --no-healthcheck --entrypoint sh "$TAG" -c "$1"; }
venv_mb=$(inside 'du -sm /app/.venv | cut -f1')
nvidia_mb=$(inside 'du -smc /app/.venv/lib/python3*/site-packages/nvidia* 2>/dev/null | tail -1 | cut -f1')
lists=$(inside 'find /var/lib/apt/lists -type f ! -name lock 2>/dev/null | wc -l')
say "in it: .venv ${venv_mb} MB, of which NVIDIA libraries ${nvidia_mb:-0} MB; apt list files: ${lists}"
[ "$lists" = 0 ] || fail "$lists apt list files left in the image"
python=$(inside 'python3 --version')
say "Python in the image: $python"
say "OK in $(( $(date +%s) - t_start ))s"
