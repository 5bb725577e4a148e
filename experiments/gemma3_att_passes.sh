#!/usr/bin/env bash
# Held-out L0 of `att` layer 9 SAEs against passes over the store (docs/gemma3.md, "L0 targets"):
# the Gemma demo's recipe at the probe budget (300 steps of 1,024 rows, width 2,048, targets 20 /
# 40 / 80) on a store of twice the sites store's tokens, so the run makes one pass over its rows
# instead of two. Compare with `experiments/gemma3_sites.sh ds1_l9` (the same run on 150k rows).
#   bash experiments/gemma3_att_passes.sh
set -euo pipefail
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
A=workdirs/g9a
CFG=configs/gemma_demo.py
[ -d "$A/activations/train" ] || python launch/generate_activations.py --config=$CFG --config.sites="('att',)" --config.store.sites="('att',)" \
  --config.layers="(9,)" --config.store.max_tokens=320000 --config.store.heldout_rows=8192 --workdir=$A > $A.gen.log 2>&1
python launch/train.py --config=$CFG --config.store.path=$A/activations --config.store.sites="('att',)" \
  --config.sites="('att',)" --config.layers="(9,)" --config.widths="(2048,)" --config.target_l0s="(20.0,40.0,80.0)" \
  --config.num_tokens=307200 --workdir=$A > $A.train.log 2>&1
python launch/evaluate.py --workdir=$A --max_tokens=4096 > $A.eval.log 2>&1
echo "[$(date +%H:%M)] att_onepass done"
