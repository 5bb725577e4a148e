#!/usr/bin/env bash
# Train one sweep config on GPUs, in one of two layouts.
#
# A) One host, one process for all its GPUs (simplest; the mesh spans the local GPUs):
#      CONFIG=configs/sweep_9b.py:width=131k WORKDIR=/data/gemmascope/9b bash launch/multi_gpu.sh
#    With 8 GPUs the 131k config's mesh (data=2 x model=4) uses all of them.
#
# B) Several processes: one per GPU on this host (LAYOUT=per_gpu), or one per host on several
#    hosts (run this script on every host with NUM_HOSTS, HOST_ID and COORDINATOR set):
#      LAYOUT=per_gpu NGPUS=8 CONFIG=... WORKDIR=... bash launch/multi_gpu.sh
#      # host i of 2, each with 8 GPUs (16 in the mesh, e.g. the 1m config's data=2 x model=8):
#      LAYOUT=per_host NUM_HOSTS=2 HOST_ID=$i COORDINATOR=10.0.0.1:8476 CONFIG=... WORKDIR=/nfs/... \
#        bash launch/multi_gpu.sh
#    Every process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, which
#    launch/train.py passes to jax.distributed.initialize(); each process then feeds its own rows
#    of every batch (its slice of the activation store) and process 0 writes metrics and exports.
#    Under SLURM, srun sets what jax.distributed.initialize() needs: add
#    --config.distributed.coordinator_address=auto to EXTRA instead.
#
# WORKDIR must be a filesystem every process sees. Check memory first, no GPU needed:
#   python launch/train.py --config="$CONFIG" --dry_run --device_memory_gb=80
set -euo pipefail
: "${CONFIG:?e.g. configs/sweep_9b.py:width=16k}" "${WORKDIR:?workdir shared by all processes}"
LAYOUT=${LAYOUT:-single}
EXTRA=${EXTRA:-}
PORT=${PORT:-8476}
PYTHON=${PYTHON:-python}  # the environment with gemmascope installed
cd "$(dirname "$0")/.."

case "$LAYOUT" in
  single)
    exec "$PYTHON" launch/train.py --config="$CONFIG" --workdir="$WORKDIR" $EXTRA ;;
  per_gpu)
    NGPUS=${NGPUS:-$(nvidia-smi -L | wc -l)}
    pids=()
    for ((i = 0; i < NGPUS; i++)); do
      CUDA_VISIBLE_DEVICES=$i JAX_COORDINATOR_ADDRESS=localhost:$PORT JAX_NUM_PROCESSES=$NGPUS JAX_PROCESS_ID=$i \
        "$PYTHON" launch/train.py --config="$CONFIG" --workdir="$WORKDIR" $EXTRA > "$WORKDIR.proc$i.log" 2>&1 &
      pids+=($!)
    done
    status=0
    for p in "${pids[@]}"; do wait "$p" || status=$?; done
    exit $status ;;
  per_host)
    : "${NUM_HOSTS:?}" "${HOST_ID:?}" "${COORDINATOR:?host:port of host 0}"
    JAX_COORDINATOR_ADDRESS=$COORDINATOR JAX_NUM_PROCESSES=$NUM_HOSTS JAX_PROCESS_ID=$HOST_ID \
      exec "$PYTHON" launch/train.py --config="$CONFIG" --workdir="$WORKDIR" $EXTRA ;;
  *) echo "LAYOUT must be single, per_gpu or per_host" >&2; exit 2 ;;
esac
