#!/usr/bin/env bash
# The Gemma 3 270M frontier beyond `res` layer 9 (docs/gemma3.md): `mlp` and `att` at layer 9, `res`
# at layer 13, plain and affine transcoders at layer 9, each at the probe budget (300 steps of 1,024
# rows, width 2,048, targets 20 / 40 / 80) with the Gemma demo's recipe and with the scalar C;
# TopK with the same input handling at `res` layer 9; transcoders with per-dimension scaling.
# One store (one LM pass) serves every series; each series trains and evaluates in its own workdir.
#   bash experiments/gemma3_sites.sh [series...]    (default: all, in this order)
set -euo pipefail
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
S=workdirs/g9s  # the store's workdir
CFG=configs/gemma_demo.py
COMMON=(--config.store.path=$S/activations --config.store.sites="('res','att','transcoder')" --config.widths="(2048,)" --config.target_l0s="(20.0,40.0,80.0)")
PROBE=307200   # 300 steps of 1,024 rows
if [ ! -f "$S/activations/train/.done" ] && [ ! -d "$S/activations/train" ]; then
  python launch/generate_activations.py --config=$CFG --config.store.sites="('res','att','transcoder')" \
    --config.layers="(9,13)" --config.store.max_tokens=160000 --config.store.heldout_rows=8192 --workdir=$S
fi
run() {  # name, then train overrides
  local name=$1; shift
  local W=workdirs/g9s_$name
  python launch/train.py --config=$CFG "${COMMON[@]}" "$@" --workdir=$W > $W.train.log 2>&1
  python launch/evaluate.py --workdir=$W --max_tokens=4096 > $W.eval.log 2>&1
  echo "[$(date +%H:%M)] $name done"
}
series=("$@")
[ ${#series[@]} -eq 0 ] && series=(ds1_l9 ds1_res13 tc_l9 scalar_l9 scalar_res13)
for s in "${series[@]}"; do
  case $s in
    ds1_l9)       run ds1_l9 --config.sites="('mlp','att')" --config.layers="(9,)" --config.num_tokens=$PROBE ;;
    ds1_res13)    run ds1_res13 --config.sites="('res',)" --config.layers="(13,)" --config.num_tokens=$PROBE ;;
    tc_l9)        run tc_l9 --config.sites="('transcoder','transcoder_affine')" --config.layers="(9,)" --config.dim_scale_power=0.0 --config.num_tokens=$PROBE ;;
    scalar_l9)    run scalar_l9 --config.sites="('mlp','att')" --config.layers="(9,)" --config.dim_scale_power=0.0 --config.num_tokens=$PROBE ;;
    scalar_res13) run scalar_res13 --config.sites="('res',)" --config.layers="(13,)" --config.dim_scale_power=0.0 --config.num_tokens=$PROBE ;;
    ds1_res13_4x) run ds1_res13_4x --config.sites="('res',)" --config.layers="(13,)" --config.num_tokens=$((4 * PROBE)) ;;
    ds1_l9_4x)    run ds1_l9_4x --config.sites="('mlp','att')" --config.layers="(9,)" --config.num_tokens=$((4 * PROBE)) ;;
    topk_ds1_res9) run topk_ds1_res9 --config.sites="('res',)" --config.layers="(9,)" --config.num_tokens=$PROBE \
                    --config.sae.arch=topk --config.sae.topk_ks="(20,40,80)" --config.sae.sparsity_loss=l0 \
                    --config.sae.l0_controller_rate=0.0 --config.sae.threshold_init_mode=constant ;;
    tc_ds1_l9)    run tc_ds1_l9 --config.sites="('transcoder','transcoder_affine')" --config.layers="(9,)" --config.num_tokens=$PROBE ;;
    *) echo "unknown series $s"; exit 2 ;;
  esac
done
