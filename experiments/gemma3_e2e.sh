#!/usr/bin/env bash
# The end-to-end stage on Gemma 3 270M `res` layer 9 (docs/gemma3.md, "The end-to-end stage"):
# the Gemma demo's recipe at the probe budget (300 steps of 1,024 rows, width 2,048, targets 20 /
# 40 / 80), with the stage's learning rate, KL coefficient, length and token batch varied. One
# store (workdirs/g9, the "Reproduce" command of docs/gemma3.md) serves every series; each series
# trains and evaluates in its own workdir, on the same held-out tokens.
#   bash experiments/gemma3_e2e.sh [series...]
set -euo pipefail
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
S=workdirs/g9  # the store's workdir (its own run is the series without the stage)
CFG=configs/gemma_demo.py
COMMON=(--config.store.path=$S/activations --config.store.sites="('res',)" --config.widths="(2048,)"
  --config.target_l0s="(20.0,40.0,80.0)" --config.num_tokens=307200)
run() {  # name, then the stage's overrides
  local name=$1; shift
  local W=workdirs/g9e_$name
  mkdir -p $W
  python launch/train.py --config=$CFG "${COMMON[@]}" "$@" --workdir=$W > $W.train.log 2>&1
  python launch/evaluate.py --workdir=$W --max_tokens=4096 > $W.eval.log 2>&1
  echo "[$(date +%H:%M)] $name done"
}
for s in "$@"; do
  case $s in
    off_seed1)     run $s --config.seed=1 ;;  # the stage-off run's second seed
    # name: kl coefficient, lr scale, fraction of the steps, sequences a step
    kl1_lr01)      run $s --config.e2e.fraction=0.1 --config.e2e.kl_coefficient=1.0 --config.e2e.lr_scale=0.1 --config.e2e.sequences=4 ;;
    kl03_lr01)     run $s --config.e2e.fraction=0.1 --config.e2e.kl_coefficient=0.3 --config.e2e.lr_scale=0.1 --config.e2e.sequences=4 ;;
    kl03_lr03)     run $s --config.e2e.fraction=0.1 --config.e2e.kl_coefficient=0.3 --config.e2e.lr_scale=0.3 --config.e2e.sequences=4 ;;
    kl1_lr003_f3)  run $s --config.e2e.fraction=0.3 --config.e2e.kl_coefficient=1.0 --config.e2e.lr_scale=0.03 --config.e2e.sequences=4 ;;
    kl1_lr1)       run $s --config.e2e.fraction=0.1 --config.e2e.kl_coefficient=1.0 --config.e2e.lr_scale=1.0 --config.e2e.sequences=4 ;;
    # the L0 controller's rate times e2e.controller_gain in the stage (it holds L0 on target)
    kl03_lr03_g3)  run $s --config.e2e.fraction=0.1 --config.e2e.kl_coefficient=0.3 --config.e2e.lr_scale=0.3 --config.e2e.sequences=4 --config.e2e.controller_gain=3 ;;
    kl03_lr03_g10) run $s --config.e2e.fraction=0.1 --config.e2e.kl_coefficient=0.3 --config.e2e.lr_scale=0.3 --config.e2e.sequences=4 --config.e2e.controller_gain=10 ;;
    kl03_lr03_g30) run $s --config.e2e.fraction=0.1 --config.e2e.kl_coefficient=0.3 --config.e2e.lr_scale=0.3 --config.e2e.sequences=4 --config.e2e.controller_gain=30 ;;
    # after the stage, each SAE's thresholds times one factor that puts L0 on its target on 16,384
    # further training rows (e2e.calibrate_rows)
    kl03_lr03_cal) run $s --config.e2e.fraction=0.1 --config.e2e.kl_coefficient=0.3 --config.e2e.lr_scale=0.3 --config.e2e.sequences=4 --config.e2e.calibrate_rows=16384 ;;
    # the KL trains the decoder only (e2e.kl_reaches=decoder): L0 stays where the recipe holds it
    dec_kl1_lr1)   run $s --config.e2e.fraction=0.1 --config.e2e.kl_coefficient=1.0 --config.e2e.lr_scale=1.0 --config.e2e.sequences=4 --config.e2e.kl_reaches=decoder ;;
    dec_kl1_lr03)  run $s --config.e2e.fraction=0.1 --config.e2e.kl_coefficient=1.0 --config.e2e.lr_scale=0.3 --config.e2e.sequences=4 --config.e2e.kl_reaches=decoder ;;
    *) echo "unknown series $s"; exit 2 ;;
  esac
done
