#!/usr/bin/env bash
# GPU check (about 5 minutes on an H100 with cold caches: 4 min 50 s on 2026-11-27): the focal-loss benchmark,
# the model benchmark (our RetinaNet, torchvision's RetinaNet, our Faster R-CNN) and the focal-loss kernel's
# correctness on CUDA against the float64 reference.
# Writes the raw JSON, the logs and a markdown summary (summary.md) into --out. Needs torch, torchvision and
# triton only (no albumentations, no pycocotools).
#   tools/gpu_check.sh [--out DIR] [--dry-run] [--skip-model]
#   --out DIR      result folder (default ./gpu_results)
#   --dry-run      run the same steps on the CPU at tiny sizes (the Triton kernel under TRITON_INTERPRET=1)
#   --skip-model   leave out tools/bench_model.py (CI's dry run does: that script has its own tests)
# Python: $PYTHON if set, else .venv/bin/python if present, else python3. Exit status 1 if any step failed.
set -uo pipefail
export PYTHONUNBUFFERED=1

OUT=./gpu_results
DRY=0
SKIP_MODEL=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
        --out=*) OUT="${1#--out=}"; shift ;;
        --dry-run) DRY=1; shift ;;
        --skip-model) SKIP_MODEL=1; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (use --out DIR, --dry-run, --skip-model)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT" || exit 2

if [[ $DRY -eq 1 ]]; then
    DEVICE=cpu
    BENCH_FOCAL_ARGS=(--quick --no-compile --no-memory)
    MODEL_RUNS=("quick:--quick")
else
    DEVICE=cuda
    BENCH_FOCAL_ARGS=()
    # train-step and inference speed with AMP at 512 and 800 px (random backbone: no weights needed offline)
    MODEL_RUNS=("512:--size 512 --batch 8 --amp" "800:--size 800 --batch 4 --amp")
fi

STATUS_FILE="$OUT/steps.tsv"
: > "$STATUS_FILE"
FAILED=0

# run_step NAME TIMEOUT_S CMD...: runs CMD with its output in $OUT/NAME.log, records "NAME<TAB>status<TAB>seconds".
run_step() {
    local name="$1" limit="$2"; shift 2
    local start=$SECONDS rc
    echo "== $name: $*"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    tail -n 25 "$OUT/$name.log"
    local status=ok
    if [[ $rc -ne 0 ]]; then status="failed (exit $rc)"; FAILED=1; fi
    [[ $rc -eq 124 ]] && status="timed out after ${limit}s"
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >> "$STATUS_FILE"
}

{
    date -u '+date: %Y-%m-%d %H:%M:%S UTC'
    echo "dry run: $DRY"
    "$PY" -c 'import sys, torch, torchvision, triton; print("python", sys.version.split()[0]); print("torch", torch.__version__, "torchvision", torchvision.__version__, "triton", triton.__version__); print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "-")'
    if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
    lscpu 2>/dev/null | grep -m1 'Model name' || true
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

run_step bench_focal 200 "$PY" tools/bench_focal.py --device "$DEVICE" --json "$OUT/bench_focal.json" \
    "${BENCH_FOCAL_ARGS[@]}"
if [[ $SKIP_MODEL -eq 1 ]]; then
    printf 'bench_model\tskipped (--skip-model)\t0\n' >> "$STATUS_FILE"
elif [[ -f tools/bench_model.py ]]; then
    for run in "${MODEL_RUNS[@]}"; do
        tag="${run%%:*}"
        read -r -a model_args <<< "${run#*:}"
        run_step "bench_model_$tag" 150 "$PY" tools/bench_model.py --device "$DEVICE" --no-pretrained \
            --json "$OUT/bench_model_$tag.json" "${model_args[@]}"
    done
else
    printf 'bench_model\tskipped (tools/bench_model.py not present)\t0\n' >> "$STATUS_FILE"
fi
# last: on CUDA it compiles the kernel for every dtype x gamma mode x alpha x C tile (a few minutes when cold),
# so a slow compile cannot cost the benchmarks their turn; its log lists each case as it finishes
run_step kernel_check 240 "$PY" tools/check_kernel.py --device "$DEVICE" --json "$OUT/kernel_check.json"

"$PY" - "$OUT" <<'PYEOF'
"""Write summary.md from the JSON files of the steps above."""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
lines = ["# GPU check summary", "", "```", (out / "env.txt").read_text().strip(), "```", "",
         "| step | status | seconds |", "|---|---|---|"]
for row in (out / "steps.tsv").read_text().splitlines():
    lines.append("| " + " | ".join(row.split("\t")) + " |")


def load(name):
    path = out / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


check = load("kernel_check.json")
if check:
    cases = check["cases"]
    bad = [c for c in cases if not c["ok"]]
    lines += ["", f"## Kernel correctness ({check['device']})", "",
              f"{len(cases) - len(bad)} of {len(cases)} checks passed."]
    for c in bad[:20]:
        lines.append(f"- FAILED: {c}")
sys.path.insert(0, str(Path.cwd()))
bench = load("bench_focal.json")
if bench:
    from detector.bench.focal import markdown_table

    lines += ["", f"## Focal loss, forward + backward ({bench['machine']}, torch {bench['torch']})", "",
              markdown_table(bench)]
for path in sorted(out.glob("bench_model_*.json")):
    model = load(path.name)
    if not model:
        continue
    from detector.bench.model import markdown_table as model_table

    lines += ["", f"## Model benchmark ({path.stem.removeprefix('bench_model_')}): {model['size']} px, "
              f"batch {model['batch']}, amp={model['amp']}, median of {model['repeats']} ({model['machine']})", "",
              model_table(model), "",
              "equal outputs (ours vs torchvision's RetinaNet): "
              + ", ".join(f"{k}={model[k]:g}" for k in ("loss_max_abs_diff", "matched_fraction_iou99",
                                                       "matched_min_iou", "matched_score_max_abs_diff"))]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
[[ $? -ne 0 ]] && FAILED=1
echo "results in $OUT"
exit $FAILED
