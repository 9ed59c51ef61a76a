#!/usr/bin/env bash
# Idempotent set-up: system packages, .venv, the package (editable, dev extras), generated protobuf code.
# Safe to run again: each step checks what is already there.
#   scripts/setup.sh            developer / CI machine: data set, test tools, dev extras
#   scripts/setup.sh --runtime  server image (deploy/Dockerfile): the package and its runtime dependencies only
# TORCH_INDEX_URL=... takes torch and torchvision from that index (the CPU-only build, say) before the rest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODE="${1:-dev}"
if [ "$MODE" = "--runtime" ]; then
    APT_PACKAGES=()
    EXTRAS=""
else
    # dataset-fashion-mnist: built-in data; chromium: report tests; prometheus: monitoring tests and promtool;
    # handwriting and printed fonts: the far-OOD suite's handwriting and letters (detector/data/ood_suite.py).
    APT_PACKAGES=(dataset-fashion-mnist chromium prometheus fonts-dejavu-core fonts-freefont-ttf fonts-urw-base35
                  fonts-dkg-handwriting fonts-breip fonts-bwht fonts-humor-sans fonts-comic-neue fonts-femkeklaver
                  fonts-kristi fonts-klee fonts-dancingscript)
    EXTRAS="[dev]"
fi

missing=()
for pkg in "${APT_PACKAGES[@]+"${APT_PACKAGES[@]}"}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing system packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "setup: Python >= 3.11 needed, $("$PYTHON" --version) found (set PYTHON=...)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

# Reinstall only when pyproject.toml changed since the last successful install.
stamp=".venv/.vae-detector-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)$EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c 'import detector, torch' 2>/dev/null; then
    # torch's CUDA build takes 5.6 GB in .venv: say so up front rather than fail half-way with pip's OSError.
    need_gb=7
    free_gb=$(( $(df -Pk . | awk 'NR==2 {print $4}') / 1024 / 1024 ))
    if [ "$free_gb" -lt "$need_gb" ]; then
        echo "setup: $free_gb GB free on the disk holding $(pwd); installing the Python packages needs about" \
             "$need_gb GB (torch's CUDA build is 5.6 GB). Free some space and run this again." >&2
        exit 1
    fi
    echo "setup: installing Python packages into .venv (torch 2.14.1 from the local wheel cache; a few minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    if [ -n "${TORCH_INDEX_URL:-}" ]; then  # e.g. https://download.pytorch.org/whl/cpu: the CPU-only build
        .venv/bin/python -m pip install -q --index-url "$TORCH_INDEX_URL" \
            $(grep -oE '"(torch|torchvision)==[^"]+"' pyproject.toml | tr -d '"')
    fi
    .venv/bin/python -m pip install -q -e ".$EXTRAS"
    echo "$want" > "$stamp"
fi

if [ -f scripts/gen_protos.sh ]; then
    bash scripts/gen_protos.sh
fi
echo "setup: ready (.venv/bin/detector)"
