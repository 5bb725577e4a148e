"""A toy activation source with known sparse ground truth, for learning and testing the trainer.

``x = sum_i c_i d_i (+ noise)`` with ``n_features > d_in`` unit-norm directions ``d_i``
(superposition) and sparse non-negative coefficients: feature i is active with probability
``p_i`` (spread over [0.5, 1.5] times the mean so features differ in frequency) and then has a
magnitude drawn uniformly from [0.5, 1.5]. A recovered SAE has a decoder row near every ``d_i``.

Every batch is a pure function of ``(seed, batch index)``, so the stream position is one integer
and a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np


class ToySource:
    """Synthetic activations ``[batch, d_in]`` with ground-truth ``features [n_features, d_in]``."""

    def __init__(
        self, d_in: int, n_features: int, mean_active: float, batch_size: int, *, seed: int = 0, noise_std: float = 0.0
    ):
        self.d_in = int(d_in)
        self.n_features = int(n_features)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.noise_std = float(noise_std)
        rng = np.random.default_rng([self.seed, 0xFEA7])
        feats = rng.standard_normal((self.n_features, self.d_in)).astype(np.float32)
        self.features = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        spread = rng.uniform(0.5, 1.5, size=self.n_features)
        self.probs = np.clip(spread / spread.sum() * mean_active, 0.0, 1.0).astype(np.float32)
        self._next = 0

    # -- the stream interface the trainer uses ------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"kind": "toy", "next_batch": int(self._next), "seed": self.seed}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "toy" or int(state.get("seed", -1)) != self.seed:
            raise ValueError(f"toy source: checkpointed data state {state} does not match seed {self.seed}")
        self._next = int(state["next_batch"])

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        x = self.batch(self._next)
        self._next += 1
        return x

    # -- pure functions of an index -----------------------------------------------------------
    def _draw(self, stream: int, index: int, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, index])
        active = rng.random((n, self.n_features), dtype=np.float32) < self.probs
        mags = rng.uniform(0.5, 1.5, size=(n, self.n_features)).astype(np.float32)
        x = (active * mags) @ self.features
        if self.noise_std:
            x += self.noise_std * rng.standard_normal(x.shape).astype(np.float32)
        return x.astype(np.float32)

    def batch(self, index: int) -> np.ndarray:
        """Training batch number ``index``: ``[batch_size, d_in]`` float32."""
        return self._draw(1, index, self.batch_size)

    def sample(self, n_rows: int) -> np.ndarray:
        """Rows from the training distribution for estimating the normalisation constant."""
        return self._draw(2, 0, n_rows)

    def heldout(self, n_rows: int) -> np.ndarray:
        """Rows never seen in training (a separate random stream), for evaluation."""
        return self._draw(3, 0, n_rows)

    def save_ground_truth(self, workdir: str) -> str:
        path = os.path.join(workdir, "toy_features.npy")
        os.makedirs(workdir, exist_ok=True)
        np.save(path, self.features)
        return path


def recovery_fraction(features: np.ndarray, w_dec: np.ndarray, threshold: float = 0.9) -> float:
    """Fraction of ground-truth rows whose best decoder row has cosine similarity >= threshold."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    w = w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True)
    best = (f @ w.T).max(axis=1)
    return float(np.mean(best >= threshold))
