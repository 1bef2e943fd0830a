"""Model selection and calibration that one image cannot flip (the one-SE rule at accuracy 1.000,
calibrators on a perfectly separated val split)."""

import numpy as np
import pytest

from animefaces.classify.calibration import apply_calibrator, fit_calibrator
from animefaces.classify.svm import accuracy_se, one_se_pick


def test_one_image_never_decides_between_kernels():
    """val 1.000 (poly-10) against 0.998 (RBF, listed first) on 500 images: tied, so the earlier
    one in config order wins. The plain binomial SE of a perfect score is 0."""
    n = 500
    items = [("rbf", 499 / n), ("linear", 497 / n), ("poly-10", 1.0)]
    assert one_se_pick(items, acc=lambda i: i[1], n=n)[0] == "rbf"
    # The order decides among ties, not the score.
    assert one_se_pick(items[::-1], acc=lambda i: i[1], n=n)[0] == "poly-10"
    # A clear gap is not a tie: 10 images worse loses.
    assert one_se_pick([("a", 490 / n), ("b", 1.0)], acc=lambda i: i[1], n=n)[0] == "b"


@pytest.mark.parametrize("n", [20, 100, 500, 5000])
def test_accuracy_se_has_a_one_image_floor_and_is_positive_at_1(n):
    assert accuracy_se(1.0, n) >= 1.0 / n > 0
    p = (0.5 * n + 1) / (n + 2)
    assert accuracy_se(0.5, n) == pytest.approx(max(np.sqrt(p * (1 - p) / n), 1 / n))


@pytest.mark.parametrize("method", ["auto", "platt", "isotonic"])
def test_separable_val_keeps_probabilities_strictly_inside_0_1(method):
    """A val split the SVM separates perfectly: the calibrator must not claim certainty. auto
    picks Platt (isotonic needs errors to learn from), and every P, however far from the
    boundary, stays strictly inside (0, 1)."""
    rng = np.random.default_rng(0)
    s = np.r_[rng.uniform(0.5, 4, 200), rng.uniform(-4, -0.5, 200)]
    y = np.r_[np.ones(200, int), np.zeros(200, int)]
    cal, info = fit_calibrator(s, y, method=method)
    if method == "auto":
        assert info["method"] == "platt", info["reason"]
        assert info["val_errors"] == 0
    far = np.array([-1e6, -50.0, -4.0, 0.0, 4.0, 50.0, 1e6])
    p = apply_calibrator(cal, far)
    assert np.all(p > 0) and np.all(p < 1), p
    assert np.all(np.diff(p) >= 0)  # still monotone
    # and not pinned to the ends, however far out
    assert p.max() <= 1 - 1e-4 + 1e-12 and p.min() >= 1e-4 - 1e-12


def test_auto_still_considers_isotonic_with_enough_val_errors():
    rng = np.random.default_rng(1)
    s = rng.uniform(-3, 3, 3000)
    y = (rng.random(3000) < np.where(s < -1, 0.05, np.where(s < 1, 0.5, 0.95))).astype(int)
    cal, info = fit_calibrator(s, y, method="auto")
    assert info["val_errors"] >= 10 and info["method"] == "isotonic"
