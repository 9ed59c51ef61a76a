#!/usr/bin/env bash
# The main job, end to end: set up, train on built-in Fashion-MNIST, evaluate, serve over gRPC,
# score normal and odd samples, show the metrics, stop the server cleanly.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
RUN="${RUN:-runs/quickstart}"
EPOCHS="${EPOCHS:-3}"
mkdir -p "$RUN"

echo "== 1. train a VAE on fashion-mnist:train ($EPOCHS epochs; the default is 20) =="
detector train --data fashion-mnist:train --out "$RUN/bundle" --epochs "$EPOCHS"

echo "== 2. build the far-OOD suite (handwriting, letters, sketches, blank, photos, textures, noise) =="
python -m detector.data.ood_suite "$RUN/ood" >/dev/null

echo "== 3. evaluate: normal = fashion-mnist:test =="
for set in handwriting photos; do
    echo "-- anomalous: $set"
    detector --quiet evaluate --model "$RUN/bundle" --normal fashion-mnist:test --anomalous "$RUN/ood/$set.npz"
done

echo "== 4. serve over gRPC (port and metrics port picked free) =="
rm -f "$RUN/ready.json"
detector serve --model "$RUN/bundle" --port 0 --metrics-port 0 --ready-file "$RUN/ready.json" > "$RUN/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do  # the ready file (JSON) appears once the server is SERVING
    [ -f "$RUN/ready.json" ] && break
    kill -0 $SERVER 2>/dev/null || { cat "$RUN/serve.log"; exit 1; }
    sleep 0.25
done
grep "^serving" "$RUN/serve.log"
target=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["grpc"])' "$RUN/ready.json")
metrics=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["metrics"])' "$RUN/ready.json")

echo "== 5. score normal and odd samples over gRPC; show the metrics =="
python scripts/demo_client.py "$target" "$metrics"

echo "== 6. stop the server (SIGTERM drains in-flight requests) =="
kill -TERM $SERVER
wait $SERVER
trap - EXIT
tail -2 "$RUN/serve.log"
