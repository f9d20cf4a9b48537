"""A random walker with a prior on a 3D grid (Grady 2006, "Multilabel random walker image
segmentation using prior models"), two labels, scipy only.

It minimises ``Σ_edges w_ij (x_i − x_j)² + λ Σ_i [p_i (1 − x_i)² + (1 − p_i) x_i²]`` over the free
voxels, the fixed ones held at their values: the linear system ``(L_UU + λ I) x_U = λ p_U − L_UF x_F``
(``L`` the graph Laplacian of the 6-neighbour grid), solved by (Jacobi-preconditioned) conjugate
gradients. Edge weights
``w = exp(−β (ΔI / σ)²) / d²`` follow the intensities (``d`` the voxel spacing along the edge, in units
of the smallest spacing), so the solution follows the image's edges away from the fixed voxels and
the prior ``p`` where nothing else decides.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import sparse


def edge_weights(image: np.ndarray, spacing: Sequence[float], beta: float, sigma: float) -> list[np.ndarray]:
    """Per axis ``a``, the weights of the edges between ``image[..., i, ...]`` and its successor along
    ``a``: an array one shorter along ``a``. ``image`` is ``(X, Y, Z)`` float, ``sigma`` in its units."""
    smallest = min(spacing)
    return [np.exp(-beta * (np.diff(image, axis=a) / sigma) ** 2) * (smallest / spacing[a]) ** 2 for a in range(3)]


def laplacian(weights: list[np.ndarray], shape: tuple[int, int, int]) -> sparse.csr_matrix:
    """The ``(N, N)`` graph Laplacian (``N = X·Y·Z``, C order) of the 6-neighbour grid with ``weights``."""
    index = np.arange(int(np.prod(shape))).reshape(shape)
    rows, cols, values = [], [], []
    for axis, w in enumerate(weights):
        head = index[tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))].ravel()
        tail = index[tuple(slice(1, None) if a == axis else slice(None) for a in range(3))].ravel()
        rows += [head, tail]
        cols += [tail, head]
        values += [-w.ravel(), -w.ravel()]
    n = int(np.prod(shape))
    off = sparse.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return (sparse.diags(-np.asarray(off.sum(axis=1)).ravel()) + off).tocsr()


def random_walk(image: np.ndarray, spacing: Sequence[float], prior: np.ndarray, fixed: np.ndarray,
                values: np.ndarray, beta: float, sigma: float, strength: float, start: np.ndarray,
                tol: float = 1e-3, maxiter: int = 300) -> np.ndarray:
    """The foreground probability ``x`` (``(X, Y, Z)`` float32 in ``[0, 1]``).

    Args:
        image: ``(X, Y, Z)`` intensities (edges follow them).
        spacing: voxel size per axis (mm).
        prior: ``(X, Y, Z)`` foreground prior ``p`` in ``[0, 1]``; ``strength`` is ``λ``.
        fixed: ``(X, Y, Z)`` bool, voxels held at ``values`` (``(X, Y, Z)``, 0 or 1).
        start: ``(X, Y, Z)`` first guess for the conjugate gradients (e.g. the current mask).
    """
    shape = image.shape
    lap = laplacian(edge_weights(image, spacing, beta, sigma), shape)
    free = ~fixed.ravel()
    x = np.where(fixed, values, 0).astype(np.float64).ravel()
    if not free.any():
        return x.reshape(shape).astype(np.float32)
    a = lap[free][:, free] + strength * sparse.identity(int(free.sum()), format="csr")
    b = strength * prior.ravel()[free] - lap[free][:, ~free] @ x[~free]
    x[free] = conjugate_gradients(a, b, start.ravel()[free].astype(np.float64), tol, maxiter)
    return np.clip(x, 0, 1).reshape(shape).astype(np.float32)


def conjugate_gradients(a: sparse.csr_matrix, b: np.ndarray, x: np.ndarray, tol: float, maxiter: int) -> np.ndarray:
    """``a x = b`` for a symmetric positive definite ``a``, Jacobi-preconditioned, from ``x``, until
    ``|r| <= tol |b|``. Inner products are plain reductions, not BLAS: a multi-threaded BLAS on a busy
    2-core machine made scipy's ``cg`` ten times slower (its threads wait for each other)."""
    inverse = 1.0 / a.diagonal()
    r = b - a @ x
    z = inverse * r
    p, rz, limit = z.copy(), float((r * z).sum()), tol * float(np.sqrt((b * b).sum()))
    for _ in range(maxiter):
        if np.sqrt((r * r).sum()) <= limit:
            break
        q = a @ p
        alpha = rz / float((p * q).sum())
        x += alpha * p
        r -= alpha * q
        z = inverse * r
        rz, previous = float((r * z).sum()), rz
        p = z + (rz / previous) * p
    return x
