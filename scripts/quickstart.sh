#!/usr/bin/env bash
# The main job, end to end: set up, train on built-in Fashion-MNIST, evaluate against
# handwritten digits (simpler) and photo patches (more complex).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
RUN="${RUN:-runs/quickstart}"
EPOCHS="${EPOCHS:-3}"
mkdir -p "$RUN"

echo "== 1. train a VAE on fashion-mnist:train ($EPOCHS epochs; the default is 20) =="
detector train --data fashion-mnist:train --out "$RUN/bundle" --epochs "$EPOCHS"

echo "== 2. build far-OOD sets from data that packages ship =="
python scripts/far_ood.py "$RUN/ood" >/dev/null

echo "== 3. evaluate: normal = fashion-mnist:test =="
for set in digits photo; do
    echo "-- anomalous: $set"
    detector --quiet evaluate --model "$RUN/bundle" --normal fashion-mnist:test --anomalous "$RUN/ood/$set.npz"
done

echo "== 4. per-sample scores of the digits to $RUN/digits_scores.csv =="
detector --quiet score --model "$RUN/bundle" --data "$RUN/ood/digits.npz" --out "$RUN/digits_scores.csv"
head -3 "$RUN/digits_scores.csv" | cut -c1-160
