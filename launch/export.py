r"""Writes an SAE folder in another file layout.

    S=workdirs/demo/saes/res/layer_15/width_4k/jumprelu_quadratic_batch_centred/average_l0_42
    python launch/export.py --sae=$S \
        --layout=sae_lens --out=/tmp/sae_lens_demo

``--sae``: a folder in any layout we read (our/Gemma Scope ``params.npz``, Gemma Scope 2
``params.safetensors``, SAELens ``cfg.json``). ``--layout``: ``sae_lens`` (loads with
``sae_lens.SAE.load_from_disk(out)``), ``gemma_scope_2`` or ``gemma_scope``. SAELens exports
carry ``sparsity.safetensors`` when the SAE was evaluated (``fire_counts.npy`` beside it).
The logic lives in :mod:`gemmascope.sae.files.export` (and the layouts in :mod:`gemmascope.sae.files.formats`).
"""

from absl import app, flags

_SAE = flags.DEFINE_string("sae", None, "SAE folder (params.npz, params.safetensors or cfg.json inside).")
_LAYOUT = flags.DEFINE_string("layout", None, "sae_lens | gemma_scope_2 | gemma_scope")
_OUT = flags.DEFINE_string("out", None, "Folder to write.")
flags.mark_flags_as_required(["sae", "layout", "out"])


def main(argv):
    del argv
    import os

    from gemmascope.sae.files import export, formats

    try:
        formats.check_layout(_LAYOUT.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    src = _SAE.value if os.path.isdir(_SAE.value) else os.path.dirname(_SAE.value)
    lf = export.saved_log10_frequency(src) if _LAYOUT.value == "sae_lens" else None
    out = export.export(_SAE.value, _LAYOUT.value, _OUT.value, lf)
    print(f"[export] {_SAE.value} -> {out} ({_LAYOUT.value}{', with sparsity' if lf is not None else ''})")


if __name__ == "__main__":
    app.run(main)
