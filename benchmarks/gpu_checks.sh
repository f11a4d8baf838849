#!/usr/bin/env bash
# The GPU checks of issue 16 (item 9), in one call of a lent GPU machine: robusthp's GPU path
# has not run on a GPU before. Three steps, each under its own time limit:
#   1. `make run` on the GPU: python -m robusthp.run experiment=quick trainer.accelerator=gpu
#   2. the Hessian memory benchmark, ResNet18, 4,096 CIFAR-shaped images, on the GPU
#   3. a 4-cell sweep: hydra/launcher=joblib hydra.launcher.n_jobs=4 (batch 32..256)
# GPU memory in use is sampled every 200 ms (nvidia-smi) for the peak of each step.
#
# Prepare here (wheels the GPU image lacks, MNIST; into .gpu/, which git ignores):
#     make gpu-bundle
# then, with the device tool:  run(command="bash benchmarks/gpu_checks.sh", carry=[".gpu"],
# timeout_s=560). What comes back under $OUT: gpu_checks.log, gpu_memory.csv, summary.json.
# A dry run on the CPU here: ACCEL=cpu PY=.venv/bin/python HESS_SAMPLES=256 HESS_MODELS=c1 \
#     ROBUSTHP_DATA_DIR=../shared/datasets bash benchmarks/gpu_checks.sh
set -u
OUT=${OUT:-/tmp/gpu_checks}
PY=${PY:-python3}
ACCEL=${ACCEL:-gpu}
HESS_SAMPLES=${HESS_SAMPLES:-4096}
HESS_MODELS=${HESS_MODELS:-resnet18}
WORK=${WORK:-/tmp/robusthp_gpu_checks}
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/gpu_checks.log") 2>&1
export PYTHONUNBUFFERED=1

if [ -d .gpu/wheels ]; then  # the GPU image has torch and Lightning, not Hydra or PyHessian
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .gpu/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src
    ln -sfn "$PWD/conf" src/robusthp/conf  # what the editable install maps (pyproject)
fi
if [ -z "${ROBUSTHP_DATA_DIR:-}" ]; then
    mkdir -p "$WORK/data" && tar xzf .gpu/mnist.tar.gz -C "$WORK/data" || exit 1
    export ROBUSTHP_DATA_DIR=$WORK/data
fi
"$PY" -c "import torch, pytorch_lightning as pl, hydra, robusthp
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-',
      '| lightning', pl.__version__, '| hydra', hydra.__version__)" || exit 1

DEVICE=cpu
if [ "$ACCEL" = gpu ]; then
    DEVICE=cuda
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 200 \
        > "$OUT/gpu_memory.csv" &
    SAMPLER=$!
fi
STEPS=()

step() {  # step NAME LIMIT_S COMMAND...: run it under `timeout`, record wall time and status
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit} s): $*"
    local t0
    t0=$(date +%s.%N)
    timeout "$limit" "$@"
    local rc=$? t1
    t1=$(date +%s.%N)
    STEPS+=("$name $rc $t0 $t1")
    echo "=== $name: rc $rc, wall $(awk "BEGIN {print $t1 - $t0}") s"
}

step make_run 150 "$PY" -m robusthp.run experiment=quick trainer.accelerator="$ACCEL" \
    trainer.progress_bar=false hydra.run.dir="$WORK/run"
step hessian_memory 200 "$PY" benchmarks/hessian_memory.py --device "$DEVICE" \
    --models $HESS_MODELS --num-samples "$HESS_SAMPLES" --products 3 --rounds 1
step sweep_joblib4 180 "$PY" -m robusthp.run -m experiment=quick trainer.accelerator="$ACCEL" \
    trainer.progress_bar=false hydra/launcher=joblib hydra.launcher.n_jobs=4 \
    batch_size=32,64,128,256 hydra.sweep.dir="$WORK/sweep"

[ -n "${SAMPLER:-}" ] && kill "$SAMPLER"
printf '%s\n' "${STEPS[@]}" > "$WORK/steps.txt"
"$PY" - "$WORK" "$OUT" <<'EOF'
"""summary.json: each step's status, wall time and peak GPU memory; each run's numbers."""
import json, pathlib, sys
from datetime import datetime

work, out = map(pathlib.Path, sys.argv[1:])
samples = []
memory = out / "gpu_memory.csv"
if memory.exists():
    for line in memory.read_text().splitlines():
        stamp, _, used = line.rpartition(",")
        try:
            t = datetime.strptime(stamp.strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((t, float(used)))
        except ValueError:
            pass
steps = []
for line in (work / "steps.txt").read_text().splitlines():
    name, rc, t0, t1 = line.split()
    t0, t1 = float(t0), float(t1)
    used = [mb for t, mb in samples if t0 <= t <= t1]
    steps.append({"step": name, "rc": int(rc), "wall_s": round(t1 - t0, 1),
                  "peak_gpu_mb_used": max(used) if used else None})
runs = []
for path in sorted(work.rglob("results.json")):
    r = json.loads(path.read_text())
    runs.append({"dir": str(path.parent.relative_to(work)), "status": r.get("status"),
                 "error": r.get("error"), "wall_time_s": r.get("wall_time_s"),
                 "timings_s": r.get("timings_s"), "metrics": r.get("metrics")})
text = json.dumps({"steps": steps, "runs": runs}, indent=1, default=str)
(out / "summary.json").write_text(text)
print(text)
EOF
