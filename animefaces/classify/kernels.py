"""The SVM kernels: one list and one implementation, used by the grid (precomputed kernels), the
pickle-free models (:mod:`.arrays`, :mod:`.linear`) and the config's validation.

Two families:

* **exact** kernels (``linear``, ``rbf``, ``poly``, ``sigmoid``): libsvm's ``SVC``. Training
  needs the (n_train, n_train) kernel matrix, so time and memory grow with n_train squared.
* **scalable** ones, for large training sets (10^5-10^6 frames), linear in n_train:
  ``linear_svc`` (liblinear's L2-loss linear SVM), ``sgd`` (hinge-loss SGD, streamed in chunks),
  ``nystroem`` (an RBF feature map from ``n_components`` training rows) and ``poly_sketch``
  (PolynomialCountSketch, a random map whose dot products approximate ``(gamma x.y + coef0)^degree``),
  each of the maps followed by a linear SVM (``solver``: liblinear or streamed SGD).

Every kernel value here is computed from the linear Gram matrix ``G = Z @ S.T`` and squared row
norms, the way libsvm computes its own, so the precomputed grid, a saved model and scikit-learn
agree to rounding.
"""

from __future__ import annotations

import numpy as np

EXACT_KERNELS = ("linear", "rbf", "poly", "sigmoid")
SCALABLE_KERNELS = ("linear_svc", "sgd", "nystroem", "poly_sketch")
KERNELS = EXACT_KERNELS + SCALABLE_KERNELS
# The linear solvers after an approximate map.
SOLVERS = ("liblinear", "sgd")
# Grid keys each kernel takes (besides ``kernel``); anything else is a config error.
GRID_KEYS = {
    "linear": ("C",),
    "rbf": ("C", "gamma"),
    "poly": ("C", "gamma", "degree", "coef0"),
    "sigmoid": ("C", "gamma", "coef0"),
    "linear_svc": ("C",),
    "sgd": ("C", "epochs"),
    "nystroem": ("C", "gamma", "n_components", "solver", "epochs"),
    "poly_sketch": ("C", "gamma", "degree", "coef0", "n_components", "solver", "epochs"),
}
# Polynomial kernels above this degree overflow float64 ((1 + x.y)^d); the paper's largest is 50.
MAX_DEGREE = 100
# Feature-map widths: below a few dozen the approximation is useless, above this the linear
# solver's memory (n_train x n_components) is what an exact SVM would need anyway.
MAX_COMPONENTS = 65536


def is_exact(kernel: str) -> bool:
    return kernel in EXACT_KERNELS


def gamma_value(gamma, *, n_features: int, variance: float) -> float:
    """libsvm's gamma: ``"scale"`` = 1 / (n_features * Var(X_train)) (every value of the scaled
    training matrix), ``"auto"`` = 1 / n_features, or the number itself."""
    if gamma == "scale":
        return 1.0 / (n_features * variance) if variance > 0 else 1.0
    if gamma == "auto":
        return 1.0 / n_features
    return float(gamma)


def from_gram(kernel: str, G: np.ndarray, sq_rows: np.ndarray, sq_cols: np.ndarray, *,
              gamma: float, degree: int = 3, coef0: float = 0.0) -> np.ndarray:
    """Kernel values from the linear Gram matrix ``G = Z @ S.T`` ((n, m) float64) and the squared
    norms of Z's rows (n,) and S's rows (m,)."""
    if kernel == "linear":
        return G
    if kernel == "rbf":
        d2 = np.maximum(sq_rows[:, None] + sq_cols[None, :] - 2.0 * G, 0.0)
        return np.exp(-gamma * d2)
    if kernel == "poly":
        return (gamma * G + coef0) ** degree
    if kernel == "sigmoid":
        return np.tanh(gamma * G + coef0)
    raise ValueError(f"kernel {kernel!r} has no kernel matrix; exact kernels: "
                     f"{', '.join(EXACT_KERNELS)}")


def kernel_matrix(kernel: str, Z: np.ndarray, S: np.ndarray, *, gamma: float, degree: int = 3,
                  coef0: float = 0.0) -> np.ndarray:
    """(n, m) kernel values between rows ``Z`` (n, d) and ``S`` (m, d), float64."""
    Z = np.asarray(Z, np.float64)
    S = np.asarray(S, np.float64)
    G = Z @ S.T
    if kernel == "linear":
        return G
    # (Z * Z).sum(1), as the saved models computed it before this module: the same bits
    return from_gram(kernel, G, (Z * Z).sum(1), (S * S).sum(1), gamma=gamma, degree=degree,
                     coef0=coef0)


# -- approximate feature maps (what a saved Nystroem / count-sketch model computes) -------------

def nystroem_map(Z: np.ndarray, components: np.ndarray, normalization: np.ndarray, *,
                 gamma: float) -> np.ndarray:
    """scikit-learn's ``Nystroem(kernel="rbf").transform``: RBF kernel values against the
    ``components`` (m, d), times ``normalization.T`` ((m, m): K_mm^-1/2). Returns (n, m)."""
    return kernel_matrix("rbf", Z, components, gamma=gamma) @ normalization.T


def count_sketch_map(Z: np.ndarray, index_hash: np.ndarray, bit_hash: np.ndarray, *,
                     n_components: int, gamma: float, coef0: float) -> np.ndarray:
    """scikit-learn's ``PolynomialCountSketch.transform`` (the Tensor Sketch of Pham & Pagh
    2013): ``degree`` count sketches of ``sqrt(gamma) x`` (with ``sqrt(coef0)`` appended when
    coef0 != 0), multiplied in the Fourier domain. ``index_hash`` / ``bit_hash``: (degree,
    d[+1]) ints in [0, n_components) and signs +-1. Returns (n, n_components) float64.

    Each count sketch is one sparse product (every input column goes to one output column with
    a sign) instead of scikit-learn's Python loop over columns: the same sums in another order."""
    from scipy import sparse
    from scipy.fft import fft, ifft

    X = np.sqrt(gamma) * np.asarray(Z, np.float64)
    if coef0 != 0:
        X = np.hstack([X, np.full((len(X), 1), np.sqrt(coef0))])
    degree, d = index_hash.shape
    prod = None
    for k in range(degree):
        H = sparse.csr_matrix((bit_hash[k].astype(np.float64), (np.arange(d), index_hash[k])),
                              shape=(d, n_components))
        f = fft(np.asarray(X @ H), axis=1)
        prod = f if prod is None else prod * f
    return np.real(ifft(prod, axis=1))
