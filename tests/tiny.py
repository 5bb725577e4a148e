"""The tiny random Llama the evaluation, steering, dashboard and transcoder tests share."""

import numpy as np

from gemmascope.lm.config import LMConfig


def tiny_llama(vocab_size: int = 40, n_layers: int = 3, bos_id: int = 1, eos_id: int = 2, pad_id: int = 0) -> LMConfig:
    """A Llama of width 16 (2 query heads of 8 sharing one kv head, MLP 24), tied embeddings, no
    soft-caps or window: small enough to compile in seconds, real enough to splice every site."""
    return LMConfig(
        arch="llama",
        vocab_size=vocab_size,
        d_model=16,
        n_layers=n_layers,
        n_heads=2,
        n_kv_heads=1,
        head_dim=8,
        d_mlp=24,
        attn_softcap=None,
        final_softcap=None,
        query_pre_attn_scalar=None,
        sliding_window=None,
        tie_embeddings=True,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
    )


def tiny_batches(cfg: LMConfig, n: int = 2, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` batches ``(tokens [4, 12] int32, mask [4, 12] bool)`` of random ids, BOS first and one
    EOS inside (position 6 of row 1); the mask is False at both, as at packed text."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n):
        toks = rng.integers(3, cfg.vocab_size, size=(4, 12)).astype(np.int32)
        toks[:, 0] = cfg.bos_id
        toks[1, 6] = cfg.eos_id
        batches.append((toks, (toks != cfg.bos_id) & (toks != cfg.eos_id)))
    return batches
