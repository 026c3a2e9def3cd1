#!/usr/bin/env bash
# The sweeps behind the bundled model, run on one H100 with all runs of a round sharing the GPU.
# Each run keeps its best-validation weights (early stopping); the best run overall is shipped as
# data/course-model. Rounds and their results: tools/sweeps/*.txt and data/course-model/README.md.
#   usage: bash tools/train_sweep.sh ROUND_FILE RUNS_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
ROUND=$1
RUNS=${2:-runs}
PY=${PYTHON:-python3}
mkdir -p "$RUNS"
while read -r name opts; do
  case "$name" in ""|\#*) continue ;; esac
  # shellcheck disable=SC2086
  "$PY" -m course_lib.pipeline.train --out "$RUNS/$name" --device cuda $opts > "$RUNS/$name.log" 2>&1 || echo "run $name failed" >&2 &
done < "$ROUND"
wait
"$PY" - "$RUNS" <<'PY'
import json, math, sys
from pathlib import Path
rows = []
for f in sorted(Path(sys.argv[1]).glob("*/training.json")):
    r = json.loads(f.read_text())
    rows.append((r["best_val_loss"], f.parent.name, r["params"], r["best_step"], r["train"]["steps"], r["seconds"]))
for loss, name, params, step, steps, sec in sorted(rows):
    print(f"{name:22s} {params/1e6:5.2f}M  best val loss {loss:.4f} (ppl {math.exp(loss):6.2f}) at step {step}/{steps}  {sec:5.0f}s")
print("BEST", sorted(rows)[0][1])
PY
