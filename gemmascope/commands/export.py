r"""Writes an SAE folder in another file layout, or a whole workdir as Gemma Scope 2's release tree.

    S=workdirs/demo/saes/res/layer_15/width_4k/jumprelu_quadratic_batch_centred/average_l0_42
    python launch/export.py --sae=$S \
        --layout=sae_lens --out=/tmp/sae_lens_demo
    python launch/export.py --workdir=workdirs/gemma_demo \
        --layout=gemma_scope_2_release --out=/tmp/mirror     # -> /tmp/mirror/gemma-scope-2-270m-pt/

``--sae``: a folder in any layout we read (our/Gemma Scope ``params.npz``, Gemma Scope 2
``params.safetensors``, SAELens ``cfg.json``). ``--layout``: ``sae_lens`` (loads with
``sae_lens.SAE.load_from_disk(out)``), ``gemma_scope_2`` or ``gemma_scope``. SAELens exports
carry ``sparsity.safetensors`` when the SAE was evaluated (``fire_counts.npy`` beside it).
``--layout=gemma_scope_2_release`` takes ``--workdir`` instead: every SAE, transcoder and CLT
under ``<workdir>/saes`` goes into ``<out>/<release>/`` in the release's folders and names, with
an ``index.json`` (naming rule and sources: :mod:`gemmascope.sae.files.release`); load one back
with ``gemmascope.load_sae("gemma-scope-2-270m-pt-res/layer_9_width_1k_l0_medium", root=out)``.
The logic lives in :mod:`gemmascope.sae.files.export` and :mod:`gemmascope.sae.files.release`.
"""

import functools

from absl import app, flags

from gemmascope.commands import run_module

RELEASE = "gemma_scope_2_release"


@functools.cache
def define_flags() -> None:
    """Declares this command's flags, once, when it runs (see :mod:`gemmascope.commands`: not at
    import, since every command module must import beside the others)."""
    global _SAE, _WORKDIR, _LAYOUT, _OUT, _RELEASE, _ALL_LAYERS, _VARIANT
    _SAE = flags.DEFINE_string("sae", None, "SAE folder (params.npz, params.safetensors or cfg.json inside).")
    _WORKDIR = flags.DEFINE_string(
        "workdir", None, f"Workdir whose saes/ go into the release tree (--layout={RELEASE})."
    )
    _LAYOUT = flags.DEFINE_string("layout", None, f"sae_lens | gemma_scope_2 | gemma_scope | {RELEASE}")
    _OUT = flags.DEFINE_string("out", None, "Folder to write.")
    _RELEASE = flags.DEFINE_string(
        "release", None, f"Release (repository) name for --layout={RELEASE}; default from the SAEs' model."
    )
    _ALL_LAYERS = flags.DEFINE_bool("all_layers", False, "Release tree: the every-layer folders (resid_post_all ...).")
    _VARIANT = flags.DEFINE_string(
        "variant", None, "Release tree: export only this variant (when a location has several)."
    )
    flags.mark_flags_as_required(["layout", "out"])


def main(argv):
    del argv
    import os

    from gemmascope.sae.files import export, formats, release

    if _LAYOUT.value == RELEASE:
        if not _WORKDIR.value or _SAE.value:
            raise app.UsageError(f"--layout={RELEASE} takes --workdir (a whole workdir), not --sae")
        try:
            release.write_release(
                _WORKDIR.value, _OUT.value, _RELEASE.value, all_layers=_ALL_LAYERS.value, variant=_VARIANT.value
            )
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            raise app.UsageError(str(e)) from None
        return
    if not _SAE.value:
        raise app.UsageError(f"--layout={_LAYOUT.value} takes --sae (one SAE folder); --workdir is for {RELEASE}")
    try:
        formats.check_layout(_LAYOUT.value)
    except ValueError as e:
        raise app.UsageError(f"{e} or {RELEASE!r}") from None
    src = _SAE.value if os.path.isdir(_SAE.value) else os.path.dirname(_SAE.value)
    lf = export.saved_log10_frequency(src) if _LAYOUT.value == "sae_lens" else None
    out = export.export(_SAE.value, _LAYOUT.value, _OUT.value, lf)
    print(f"[export] {_SAE.value} -> {out} ({_LAYOUT.value}{', with sparsity' if lf is not None else ''})")


def run(argv: list[str] | None = None) -> None:
    """``gemmascope export ...`` and ``python launch/export.py ...`` (``argv``: ``sys.argv`` when None)."""
    define_flags()
    run_module(__name__, main, argv)
