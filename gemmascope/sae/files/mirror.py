"""Reading a local mirror of Gemma Scope 2 release trees by release name.

A mirror is a folder holding one folder per release repository (``<root>/gemma-scope-2-270m-pt/``,
as :func:`gemmascope.sae.files.release.write_release` writes it, or as a download of
``google/gemma-scope-2-270m-pt`` is laid out). :func:`resolve` turns a name into the SAE folder;
:func:`gemmascope.sae.files.io.load_params` (``gemmascope.load_sae(name, root=MIRROR)``) loads it.
The folder names and SAELens's release suffixes are documented, with their sources, in
:mod:`gemmascope.sae.files.release`. A module of its own, below ``io`` (which imports it) and
``release`` (which imports ``io``), so that neither imports the other back.
"""

from __future__ import annotations

import difflib
import os

from gemmascope.sae.files.layouts import SAEFileError, read_json_object

INDEX = "index.json"
CLT_FOLDER = "clt"
CROSSCODER_FOLDER = "crosscoder"
#: SAELens's release suffix -> folder (longest first: "-res-all" before "-res")
SAE_LENS_SUFFIXES = (
    ("transcoders-all", "transcoder_all"),
    ("transcoders", "transcoder"),
    ("res-all", "resid_post_all"),
    ("mlp-all", "mlp_out_all"),
    ("att-all", "attn_out_all"),
    ("res", "resid_post"),
    ("mlp", "mlp_out"),
    ("att", "attn_out"),
    ("clt", CLT_FOLDER),
    ("crosscoder", CROSSCODER_FOLDER),
)


def _is_sae_folder(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "params.safetensors")) or os.path.isfile(
        os.path.join(folder, "params_layer_0.safetensors")
    )


def mirror_ids(root: str) -> list[str]:
    """Every SAE a mirror holds, as ``<repo>/<folder>/<name>``: from each repository's
    ``index.json`` when it has one, else from the folders holding SAE files."""
    out = []
    if not os.path.isdir(root):
        return out
    for repo in sorted(os.listdir(root)):
        top = os.path.join(root, repo)
        if repo.startswith(".") or not os.path.isdir(top):
            continue
        index = read_json_object(os.path.join(top, INDEX))
        if index is not None:
            rows = index.get("saes")
            good = isinstance(rows, list) and all(isinstance(r, dict) and isinstance(r.get("id"), str) for r in rows)
            if not good:
                raise SAEFileError(f"{os.path.join(top, INDEX)}: field 'saes' must be a list of objects with an 'id'")
            out += [f"{repo}/{row['id']}" for row in rows]
            continue
        known = {f for _, f in SAE_LENS_SUFFIXES}
        for sub in sorted(os.listdir(top)):
            if sub in known and os.path.isdir(os.path.join(top, sub)):
                names = sorted(os.listdir(os.path.join(top, sub)))
                out += [f"{repo}/{sub}/{n}" for n in names if _is_sae_folder(os.path.join(top, sub, n))]
    return out


def _missing(name: str, root: str, why: str) -> SAEFileError:
    held = mirror_ids(root)
    close = difflib.get_close_matches(name, held, n=3, cutoff=0.5)
    shown = ", ".join(held[:40]) + (f", ... ({len(held) - 40} more)" if len(held) > 40 else "")
    hint = f"; closest: {', '.join(close)}" if close else ""
    return SAEFileError(f"{name!r}: {why} in the mirror {root}{hint}. It holds {len(held)}: {shown or 'nothing'}")


def resolve(name: str, root: str) -> str:
    """The folder under the mirror ``root`` that a release name gives. Accepted forms:
    ``<repo>/<folder>/<name>`` (``gemma-scope-2-270m-pt/resid_post/layer_9_width_16k_l0_medium``,
    also with a leading ``google/``) and SAELens's ``<repo>-<suffix>/<sae_id>``
    (``gemma-scope-2-270m-pt-res/layer_9_width_16k_l0_medium``; ``-transcoders`` ids may keep
    their ``transcoder/`` prefix). SAEFileError listing what the mirror holds when it is missing."""
    parts = [p for p in name.strip().strip("/").split("/") if p]
    if parts[:1] == ["google"]:
        parts = parts[1:]
    if not parts:
        raise _missing(name, root, "an empty name")
    if len(parts) >= 3 and os.path.isdir(os.path.join(root, parts[0])):
        folder = os.path.join(root, *parts)
    else:
        for suffix, sub in SAE_LENS_SUFFIXES:
            if parts[0].endswith(f"-{suffix}") and len(parts) >= 2:
                repo = parts[0][: -len(suffix) - 1]
                rest = parts[2:] if parts[1] == sub else parts[1:]
                folder = os.path.join(root, repo, sub, *rest)
                break
        else:
            why = "neither <repo>/<folder>/<name> nor a SAELens release id <repo>-<res|mlp|...>/<id>"
            raise _missing(name, root, why)
    if not _is_sae_folder(folder):
        raise _missing(name, root, f"no SAE at {folder}")
    return folder
