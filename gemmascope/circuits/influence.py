"""A node's influence on the output (Ameisen et al. 2025), on any adjacency matrix: used by the
pruning (:mod:`gemmascope.circuits.prune`) and by :func:`gemmascope.circuits.attribution.attribute`
to choose which features to attribute first when ``max_feature_nodes`` caps them.

With ``A`` the adjacency matrix (``[target, source]``) with absolute values, each row normalised
to sum 1 (how a target's input divides among its sources), a node's influence on the output is
``w^T (A + A^2 + ...)``: every path from the weighted outputs back to the node, summed. An
attribution graph is a DAG (a source always sits before its target), so ``A`` is nilpotent and
the series ends after at most ``n_nodes`` terms.
"""

from __future__ import annotations

import numpy as np


def normalise(adjacency: np.ndarray) -> np.ndarray:
    """``|A|`` with each row divided by its sum (rows summing to 0 stay 0)."""
    a = np.abs(np.asarray(adjacency, np.float64))
    return a / np.maximum(a.sum(axis=1, keepdims=True), 1e-10)


def influence(normalised: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``weights^T (A + A^2 + ...)`` [n_nodes] by repeated products (module doc); RuntimeError if
    the series does not end (the matrix is not a DAG's)."""
    current = np.asarray(weights, np.float64) @ normalised
    total = current.copy()
    for _ in range(normalised.shape[0] + 1):
        if not current.any():
            return total
        current = current @ normalised
        total += current
    raise RuntimeError("influence did not converge: the adjacency matrix has a cycle")
