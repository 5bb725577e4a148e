#!/usr/bin/env bash
# Train one Gemma Scope sweep config on a multi-host Cloud TPU slice (one process per TPU VM host).
#
#   TPU=my-v5p-32 ZONE=us-east5-a PROJECT=my-project \
#   CONFIG=configs/sweep_9b.py:width=1m,layer=20 WORKDIR=/mnt/shared/gemmascope/9b \
#   bash launch/tpu_pod.sh
#
# What it does (big_vision's run_tpu.sh pattern):
#   1. copies this checkout to every host (gcloud ... scp --worker=all) and installs it;
#   2. starts launch/train.py on every host at once (gcloud ... ssh --worker=all). On TPU VMs
#      jax.distributed.initialize() finds the coordinator, process count and process id by itself,
#      so the only switch is --config.distributed.coordinator_address=auto.
# The mesh must use every chip of the slice: mesh.data * mesh.model = chips (e.g. v5p-32 = 16
# chips: the 1m config's data=2 x model=8). Check memory first on this machine, no TPU needed:
#   python launch/train.py --config="$CONFIG" --dry_run --device_memory_gb=95
# WORKDIR must be one filesystem every host sees (NFS / Filestore / gcsfuse mount): orbax writes
# the checkpoints from all hosts, process 0 writes metrics.jsonl and the exported SAEs. The
# activation store (config.store.path) may be a gs:// URL; each host reads its own slice of it.
set -euo pipefail
: "${TPU:?name of the TPU VM slice}" "${ZONE:?zone}" "${CONFIG:?e.g. configs/sweep_9b.py:width=16k}" "${WORKDIR:?shared workdir}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
EXTRA=${EXTRA:-}            # more flags, e.g. "--config.mesh.data=4 --config.mesh.model=4"
REMOTE_DIR=${REMOTE_DIR:-gemmascope}
HERE=$(cd "$(dirname "$0")/.." && pwd)

tar -C "$HERE" --exclude=.git --exclude=workdirs --exclude='*.pyc' -czf /tmp/gemmascope_src.tgz .
gcloud compute tpus tpu-vm scp /tmp/gemmascope_src.tgz "$TPU":/tmp/ --worker=all --zone="$ZONE" $PROJECT_FLAG
gcloud compute tpus tpu-vm ssh "$TPU" --worker=all --zone="$ZONE" $PROJECT_FLAG --command="
  set -e; mkdir -p ~/$REMOTE_DIR && tar -C ~/$REMOTE_DIR -xzf /tmp/gemmascope_src.tgz && cd ~/$REMOTE_DIR &&
  python3 -m venv .venv && . .venv/bin/activate && pip install -q -e . 'jax[tpu]' \
    -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
gcloud compute tpus tpu-vm ssh "$TPU" --worker=all --zone="$ZONE" $PROJECT_FLAG --command="
  cd ~/$REMOTE_DIR && . .venv/bin/activate &&
  python launch/train.py --config='$CONFIG' --workdir='$WORKDIR' --config.distributed.coordinator_address=auto $EXTRA \
    2>&1 | tee -a ~/train_\$(hostname).log"
