r"""Gemma Scope 2's release tree: a whole workdir written out as one (:func:`write_release`); SAEs
come back from a local mirror by release name through :func:`gemmascope.sae.files.io.load_params`
(``gemmascope.load_sae(name, root=MIRROR)``; the names: :mod:`gemmascope.sae.files.mirror`).

Gemma Scope 2 publishes one Hugging Face repository per model, ``google/gemma-scope-2-<size>-<pt|it>``,
whose folders we reproduce under ``<out>/<repo>/``::

    index.json                                      ours: every SAE written, its source and L0
    resid_post/layer_9_width_16k_l0_medium/         params.safetensors, config.json (+ our metadata.json)
    resid_post_all/ mlp_out/ mlp_out_all/ attn_out/ attn_out_all/
    transcoder/layer_9_width_16k_l0_small_affine/   transcoders (the affine ones end in _affine)
    transcoder_all/
    clt/width_16k_l0_medium[_affine]/               params_layer_<i>.safetensors + config.json
    crosscoder/layer_5_9_12_15_width_65k_l0_medium/ weakly causal crosscoders, the same per-layer files

The plain folders hold selected layers at three L0 targets (``small``, ``medium``, ``big``); the
``_all`` folders hold every layer at two (``small``, ``big``). SAELens names each folder a release:
``gemma-scope-2-270m-pt-res`` is ``resid_post``, ``-res-all`` ``resid_post_all``, ``-mlp[-all]``,
``-att[-all]``, ``-transcoders[-all]`` (its ``-transcoders`` ids keep the ``transcoder/`` prefix).

Sources (read December 2026):

* SAELens 6.54.12, ``sae_lens/pretrained_saes.yaml`` (the ``gemma-scope-2-*`` entries: folder and
  SAE names, the ``l0`` target of each) and ``sae_lens/loading/pretrained_sae_loaders.py``
  (``gemma_3_sae_huggingface_loader``, ``get_gemma_3_config_from_hf``,
  ``_infer_gemma_3_raw_cfg_dict``: the ``config.json`` fields it reads and the HF hook names of
  each folder; CLT files as ``<clt folder>/params_layer_<i>.safetensors``).
* circuit-tracer (decoderesearch/circuit-tracer ``tests/test_attributions_gemma3_nnsight.py`` loads
  ``mwhanna/gemma-scope-2-270m-pt/clt/width_262k_l0_medium_affine``, a repackaging of the 270M
  release): a CLT folder is ``clt/width_<W>_l0_<bucket>[_affine]``, no layer (it spans them all).
  SAELens 6.54.12 lists no Gemma Scope 2 CLT release; ``<repo>-clt`` is our name for that folder.
* Crosscoders: public code loading ``google/gemma-scope-2-1b-it``'s
  ``crosscoder/layer_7_13_17_22_width_262k_l0_medium/params_layer_<0-3>.safetensors`` and the
  270M release's ``crosscoder/layer_5_9_12_15_width_1m_l0_big/config.json`` (``type:
  "crosscoder"``, hooks ``model.layers.{5,9,12,15}.output``, ``width`` counting every layer's
  latents: 1m = 4 x 262k). We write that folder name, the width as the sum over layers, and the
  bucket of the per-layer target L0 (whether the release's ``l0`` is per layer or summed is not
  stated where we looked); ``<repo>-crosscoder`` is our SAELens-style name for the folder.
* The release's ``config.json`` keys (``hf_hook_point_in``, ``model_name``, ``l0``, ``width``; for
  transcoders ``hf_hook_point_out`` and ``affine_connection``; ``architecture: "jump_relu"``, which
  SAELens requires) as SAELens's loader and its tests read them; we saw no released file itself.

Names for our runs (the rule, since our widths and L0s rarely equal the release's):

* width: :func:`~gemmascope.sae.files.layouts.width_name`, thousands rounded down as the release
  does (16384 -> ``16k``, 262144 -> ``262k``, 2**20 -> ``1m``; ours 1024 -> ``1k``, 4096 -> ``4k``).
* L0 bucket: the SAE's ``target_l0`` (what it was trained for, like the release's names), else its
  measured ``l0``, goes to the bucket whose release target is nearest on a log scale. Targets at
  full depth in the yaml: plain folders small 20, medium 60, big 150; ``_all`` folders small 20,
  big 120 (so plain: small < 34.6 <= medium < 94.9 <= big; ``_all``: small < 49 <= big). The
  release lowers its targets in the first third of the layers (layer 0: 10 / 60); we do not.
* One SAE per bucket at a location (site, layer, width, affine): the nearest to the bucket's
  target. Every other SAE of a sweep keeps its measured L0 as the label (``l0_42``), as our
  per-SAE Gemma Scope 2 export does; a name still taken gets the release's ``_seed_<k>`` suffix.
  ``index.json`` records which source folder each name holds.
* ``--all_layers`` writes the ``_all`` folders instead of the plain ones. Architectures without a
  Gemma Scope 2 form (TopK, ReLU) and sites outside it (``toy``) are skipped and listed in the index.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from typing import Any

from gemmascope.common import write_bytes_atomic
from gemmascope.sae.files import formats, multilayer
from gemmascope.sae.files import io as sae_io
from gemmascope.sae.files.layouts import file_layout, json_default, width_name
from gemmascope.sae.files.mirror import CLT_FOLDER, CROSSCODER_FOLDER, INDEX, SAE_LENS_SUFFIXES

#: our site -> (the plain folder, the every-layer folder)
FOLDERS = {
    "res": ("resid_post", "resid_post_all"),
    "mlp": ("mlp_out", "mlp_out_all"),
    "att": ("attn_out", "attn_out_all"),
    "transcoder": ("transcoder", "transcoder_all"),
    "transcoder_affine": ("transcoder", "transcoder_all"),
    "mlp_in": ("transcoder", "transcoder_all"),  # older transcoders named their input site
}
#: the release's L0 targets at full depth: plain folders, then ``_all`` folders
BUCKETS = {False: {"small": 20, "medium": 60, "big": 150}, True: {"small": 20, "big": 120}}
#: the Hugging Face module outputs each folder's SAEs read (SAELens's ``_infer_gemma_3_raw_cfg_dict``)
HF_HOOKS = {
    "res": ("model.layers.{layer}.output", None),
    "att": ("model.layers.{layer}.self_attn.o_proj.input", None),
    "mlp": ("model.layers.{layer}.post_feedforward_layernorm.output", None),
    "transcoder": (
        "model.layers.{layer}.pre_feedforward_layernorm.output",
        "model.layers.{layer}.post_feedforward_layernorm.output",
    ),
}


def l0_bucket(l0: float, all_layers: bool = False) -> str:
    """The release bucket whose target is nearest to ``l0`` on a log scale (module doc)."""
    if not l0 > 0:
        raise ValueError(f"an L0 bucket needs a positive L0, got {l0!r}")
    targets = BUCKETS[bool(all_layers)]
    return min(targets, key=lambda b: abs(math.log(l0 / targets[b])))


def release_for_model(model: str) -> str | None:
    """``gemma-scope-2-<size>-<pt|it>`` for a Gemma 3 model name (``"Gemma 3 270M (Q4_K_M GGUF,
    ...)"`` -> ``gemma-scope-2-270m-pt``), None for any other model."""
    m = re.search(r"gemma[ _-]?3[ _-]+(\d+[mb])\b", model or "", re.I)
    if not m:
        return None
    it = re.search(r"(?:^|[ _(-])(it|instruct\w*)(?:$|[ _),-])", model, re.I)
    return f"gemma-scope-2-{m.group(1).lower()}-{'it' if it else 'pt'}"


def _model_name(release: str, model: str | None) -> str:
    """``config.json``'s ``model_name``: the HF model the release name implies (SAELens infers the
    same from the repository), else our metadata's model."""
    if release.startswith("gemma-scope-2-"):
        return "google/" + release.replace("gemma-scope-2", "gemma-3", 1)
    return model or "unknown"


def _write_json(path: str, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=json_default).encode()
    write_bytes_atomic(path, text)


def _candidate(workdir: str, folder: str, all_layers: bool) -> tuple[dict[str, Any] | None, str | None]:
    """One SAE folder of the workdir -> (its entry, None) or (None, why it is skipped)."""
    if os.path.exists(os.path.join(folder, "params_layer_0.safetensors")):
        meta = multilayer.read_clt_config(folder) or {}
        kind, sub, layer, affine = "clt", CLT_FOLDER, None, bool(meta.get("affine", False))
        d_sae = meta.get("d_sae") or multilayer.load_gemma_scope_2_clt(folder)["W_enc"].shape[-1]
        if meta.get("architecture") == "crosscoder":  # its layers name it; its width is all layers' latents
            kind, sub, layer = "crosscoder", CROSSCODER_FOLDER, tuple(int(l) for l in meta["layers"])
            d_sae = int(d_sae) * len(layer)
    else:
        meta = sae_io.load_metadata(folder)
        site = meta.get("site")
        if site not in FOLDERS:
            return None, f"site {site!r} has no Gemma Scope 2 folder (it holds {sorted(FOLDERS)} and CLTs)"
        layout = file_layout(meta, folder)
        if layout not in ("jumprelu", "transcoder"):
            return None, f"architecture {meta.get('architecture')!r} has no Gemma Scope 2 form (JumpReLU only)"
        if meta.get("layer") is None:
            return None, "metadata.json gives no 'layer'"
        kind, sub, layer = "sae", FOLDERS[site][int(bool(all_layers))], int(meta["layer"])
        affine = site == "transcoder_affine" or bool(meta.get("affine_skip", False))
        d_sae = meta.get("d_sae") or sae_io.load_params(folder)["W_enc"].shape[1]
    l0, target = meta.get("l0"), meta.get("target_l0")
    key = target if isinstance(target, (int, float)) and target > 0 else l0
    if not isinstance(key, (int, float)) or not key > 0:
        return None, "no positive 'target_l0' or 'l0' in its metadata to name its L0 bucket"
    return {
        "kind": kind,
        "folder": sub,
        "layer": layer,
        "d_sae": int(d_sae),
        "affine": affine,
        "variant": meta.get("variant"),
        "l0": float(l0) if isinstance(l0, (int, float)) else None,
        "target_l0": float(target) if isinstance(target, (int, float)) else None,
        "bucket_l0": float(key),
        "model": meta.get("model"),
        "meta": meta,
        "source": os.path.relpath(folder, workdir),
    }, None


def _name(c: Mapping[str, Any], label: str) -> str:
    base = f"width_{width_name(c['d_sae'])}_l0_{label}" + ("_affine" if c["affine"] else "")
    if c["kind"] == "crosscoder":
        return f"layer_{'_'.join(str(l) for l in c['layer'])}_{base}"
    return base if c["kind"] == "clt" else f"layer_{c['layer']}_{base}"


def plan(workdir: str, all_layers: bool = False, variant: str | None = None) -> tuple[list[dict], list[dict]]:
    """Every SAE under ``workdir/saes`` with its release folder and name (``entry["id"]`` =
    ``<folder>/<name>``), and the skipped ones with the reason; naming rule in the module doc.
    ValueError naming the location and its variants when one location holds several variants
    and ``variant`` picks none (their bucket names would mix)."""
    saes = glob.glob(os.path.join(workdir, "saes", "**", "params.npz"), recursive=True)
    clts = glob.glob(os.path.join(workdir, "saes", "**", "params_layer_0.safetensors"), recursive=True)
    if not saes and not clts:
        raise FileNotFoundError(f"{os.path.join(workdir, 'saes')}: no SAEs to export (train first)")
    entries, skipped = [], []
    # a multi-layer model written as one SAE (an acausal crosscoder) has no Gemma Scope 2 folder:
    # listed as skipped with its reason, as other sites are
    single = glob.glob(os.path.join(workdir, "saes", "**", "params.safetensors"), recursive=True)
    for folder in sorted({os.path.dirname(p) for p in saes + clts + single}):
        c, why = _candidate(workdir, folder, all_layers)
        if c is None:
            skipped.append({"source": os.path.relpath(folder, workdir), "why": why})
        elif variant is not None and c["variant"] != variant:
            skipped.append({"source": c["source"], "why": f"variant {c['variant']!r}, not --variant={variant!r}"})
        else:
            entries.append(c)
    groups: dict[tuple, list[dict]] = {}
    for c in entries:
        groups.setdefault((c["folder"], c["layer"], c["d_sae"], c["affine"]), []).append(c)
    taken: set[str] = set()
    for (sub, layer, d_sae, affine), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        variants = sorted({str(c["variant"]) for c in group})
        if len(variants) > 1:
            where = f"{sub}, layer {layer}, width {d_sae}" + (", affine" if affine else "")
            raise ValueError(
                f"{workdir}: {where} holds the variants {variants}; a release names one SAE per L0 "
                "bucket, so pick one with --variant"
            )
        targets = BUCKETS[bool(all_layers)]
        winners: dict[int, str] = {}
        for bucket, target in targets.items():
            mine = [i for i, c in enumerate(group) if l0_bucket(c["bucket_l0"], all_layers) == bucket]
            if mine:
                winners[min(mine, key=lambda i: abs(math.log(group[i]["bucket_l0"] / target)))] = bucket
        for i, c in enumerate(group):
            c["bucket"] = winners.get(i)
            label = c["bucket"] or str(int(round(c["l0"] if c["l0"] else c["bucket_l0"])))
            name, k = _name(c, label), 0
            while f"{sub}/{name}" in taken:
                k += 1
                name = f"{_name(c, label)}_seed_{k}"
            taken.add(f"{sub}/{name}")
            c["name"], c["id"] = name, f"{sub}/{name}"
    return sorted(entries, key=lambda c: c["id"]), skipped


def _sae_lens_id(release: str, c: Mapping[str, Any]) -> dict[str, str]:
    """The SAELens release id and ``sae_id`` this folder would have (its yaml's conventions)."""
    suffix = next(s for s, f in SAE_LENS_SUFFIXES if f == c["folder"])
    sae_id = f"transcoder/{c['name']}" if c["folder"] == "transcoder" else c["name"]
    return {"release": f"{release}-{suffix}", "sae_id": sae_id}


def _release_config(release: str, c: Mapping[str, Any]) -> dict[str, Any]:
    """The release's ``config.json`` for one single-layer SAE or transcoder (module doc)."""
    site = c["meta"]["site"]
    hook_in, hook_out = HF_HOOKS["transcoder" if c["folder"].startswith("transcoder") else site]
    cfg = {
        "architecture": "jump_relu",
        "model_name": _model_name(release, c["model"]),
        "hf_hook_point_in": hook_in.format(layer=c["layer"]),
        "width": c["d_sae"],
        "l0": int(round(c["bucket_l0"])),
    }
    if hook_out is not None:
        cfg.update(hf_hook_point_out=hook_out.format(layer=c["layer"]), affine_connection=c["affine"])
    return cfg


def write_release(
    workdir: str,
    out: str,
    release: str | None = None,
    *,
    all_layers: bool = False,
    variant: str | None = None,
    log: Callable[[str], None] | None = print,
) -> str:
    """Writes every SAE, transcoder and CLT of ``workdir`` as the release tree ``out/<release>/``
    (module doc) and returns that folder.

    ``release``: the repository name (``gemma-scope-2-270m-pt``); by default derived from the SAEs'
    ``model`` (:func:`release_for_model`), an error naming the model when it is not a Gemma 3.
    The tree is built in a hidden folder beside it and renamed into place at the end, so a failed
    export leaves nothing; an existing ``out/<release>`` is refused, not merged into.
    """
    entries, skipped = plan(workdir, all_layers, variant)
    if not entries:
        why = "; ".join(f"{s['source']}: {s['why']}" for s in skipped)
        raise ValueError(f"{workdir}: no SAE has a Gemma Scope 2 form ({why})")
    if release is None:
        models = sorted({str(c["model"]) for c in entries})
        names = {release_for_model(m) for m in models}
        if len(names) != 1 or None in names:
            raise ValueError(
                f"{workdir}: cannot name the release from the SAEs' models {models}; pass --release "
                "(e.g. gemma-scope-2-270m-pt)"
            )
        release = names.pop()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", release):
        raise ValueError(f"release name {release!r}: use letters, digits, '.', '_' and '-' (a folder name)")
    final = os.path.join(out, release)
    if os.path.exists(final):
        raise FileExistsError(f"{final}: already exists; remove it or choose another --out")
    tmp = os.path.join(out, f".{release}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    index = []
    try:
        for c in entries:
            src, dst = os.path.join(workdir, c["source"]), os.path.join(tmp, c["folder"], c["name"])
            meta = {k: v for k, v in c["meta"].items() if k != "params_sha256"}
            meta.update(release=release, release_id=c["id"], source=c["source"])
            if c["kind"] in ("clt", "crosscoder"):
                cfg = {**meta, "model_name": _model_name(release, c["model"]), "width": c["d_sae"]}
                cfg["l0_target"] = int(round(c["bucket_l0"]))
                multilayer.save_gemma_scope_2_clt(dst, multilayer.load_gemma_scope_2_clt(src), cfg)
            else:
                formats.save_gemma_scope_2(dst, sae_io.load_params(src), meta)
                _write_json(os.path.join(dst, "config.json"), _release_config(release, c))
            row = {k: c[k] for k in ("id", "kind", "layer", "d_sae", "affine", "variant", "l0", "target_l0", "bucket")}
            row.update(site=c["meta"].get("site"), source=c["source"])
            if c["kind"] == "sae":
                row["sae_lens"] = _sae_lens_id(release, c)
            index.append(row)
            if log:
                log(f"[release] {c['source']} -> {release}/{c['id']}")
        _write_json(
            os.path.join(tmp, INDEX),
            {
                "release": release,
                "written_by": "gemmascope",
                "workdir": os.path.basename(os.path.abspath(workdir)),  # a name, not this machine's path
                "all_layers": bool(all_layers),
                "l0_targets": BUCKETS[bool(all_layers)],
                "saes": index,
                "skipped": skipped,
            },
        )
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if log:
        log(f"[release] {len(index)} SAEs in {final} ({len(skipped)} skipped: see {INDEX})")
    return final
