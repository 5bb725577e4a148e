#!/usr/bin/env bash
# The first accelerator we are lent: the step benchmarks, the sparse path and a short sharded
# sweep, written to one folder so the numbers come back at once (about 5-8 minutes on one H100).
#
#   OUT=/path/for/results bash bench/gpu_check.sh        (default OUT: workdirs/gpu_check)
#
# Needs a Python with this package and a CUDA (or TPU) jax installed (`pip install -e ".[test]"`
# and `pip install "jax[cuda12]"`); the machine needs no model hub (the embedded models only).
# Every step runs under its own time limit and the script goes on after a failure, so one
# problem costs its own numbers only; `summary.txt` lists what ran and how it ended.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-workdirs/gpu_check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python}
: > "$OUT/summary.txt"

step() {  # name, time limit (s), command...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}

step devices 60 "$PY" -c "import jax; print(jax.__version__, jax.default_backend(), jax.devices())"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
# Dense step throughput against the device's own matmul rate (the demos' and Gemma 2 2B's shapes).
step dense_step 240 "$PY" bench/bench_sae_step.py --shapes=576x4096,640x16384,2304x16384,2304x65536 \
  --batch=4096 --no-write
# The sparse path against the dense one at the widths it is for (the CPU goals' shapes).
step sparse_step 300 "$PY" bench/bench_sae_step.py --sparse --shapes=576x65536,640x262144 --batch=4096 \
  --l0s=32,64,128 --no-write
# A real training run on the embedded SmolLM2 (online, no store), to see tokens/s end to end.
step demo_online 300 "$PY" launch/train.py --config=configs/demo.py --workdir="$OUT/demo_online" \
  --config.source=online --config.num_tokens=2000000 --config.store.sites="()"
# The one-pass whole-model sweep on Gemma 3 270M (18 SAEs, one LM pass per batch) against a run per layer.
step layer_sweep 420 "$PY" bench/bench_layer_sweep.py --steps=20 --batch=4096 --width=16384
cp BENCHMARKS.md "$OUT/BENCHMARKS.after.md" 2>/dev/null || true
echo "results in $OUT" | tee -a "$OUT/summary.txt"
