"""Classifier two-sample test (C2ST).

A classifier is trained to tell samples of ``p`` (label 0) from samples of
``q`` (label 1); its cross-validated accuracy measures how different the two
distributions are: 0.5 means the classifier does no better than chance (the
sets are indistinguishable to it), 1.0 means they are perfectly separable.
The accuracy of the best possible classifier between equal-size sets is
``0.5 + 0.5 * TV(p, q)``, so a C2ST accuracy estimates a lower bound on the
total-variation distance.

scikit-learn is needed (the optional extra ``mfask[metrics]``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from mfask.diagnostics._arrays import as_samples, z_score as standardise
from mfask.errors import InvalidInputError

__all__ = ["c2st"]


def c2st(
    samples_p: Any,
    samples_q: Any,
    *,
    classifier: Literal["rf", "mlp"] = "rf",
    folds: int = 5,
    seed: int = 0,
    z_score: bool = True,
) -> float:
    """Cross-validated accuracy of a classifier separating two sample sets.

    Arguments:
        samples_p: reference samples, shape ``(n_p, d)`` (or ``(n_p,)`` for
            ``d = 1``), numpy or torch; typically the reference posterior.
        samples_q: samples to compare, shape ``(n_q, d)``; typically the
            approximate posterior.
        classifier: ``"rf"``, a random forest with scikit-learn's default
            hyper-parameters (as in the ``sbi`` package), or ``"mlp"``, a
            multi-layer perceptron with two hidden layers of ``10 * d`` ReLU
            units trained by Adam for at most 1000 epochs (as in ``sbibm``).
        folds: number of stratified cross-validation folds (at least 2).
        seed: seeds the subsampling, the fold split and the classifier.
        z_score: standardise both sets with the mean and standard deviation of
            the *reference* ``samples_p`` (dimensions with zero spread are
            only centred), so that the classifier sees comparable scales.

    Sizes: if ``n_p != n_q`` the larger set is subsampled without replacement,
    with a generator seeded by ``seed``, to the size of the smaller one, so
    that chance level is exactly 0.5.

    Returns:
        The mean accuracy over the folds, a Python float in ``[0, 1]``;
        about 0.5 when the distributions are indistinguishable.
    """
    try:
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.neural_network import MLPClassifier
    except ImportError as error:
        raise ImportError(
            "c2st needs scikit-learn, an optional dependency of mfask; install it "
            "with `pip install mfask[metrics]`"
        ) from error

    p = as_samples(samples_p, "samples_p")
    q = as_samples(samples_q, "samples_q")
    if p.shape[1] != q.shape[1]:
        raise InvalidInputError(
            f"samples_p and samples_q must have the same dimension; got "
            f"{p.shape[1]} and {q.shape[1]}"
        )
    if not isinstance(folds, (int, np.integer)) or folds < 2:
        raise InvalidInputError(f"folds must be an integer >= 2; got {folds!r}")
    if classifier not in ("rf", "mlp"):
        raise InvalidInputError(f"classifier must be 'rf' or 'mlp'; got {classifier!r}")

    rng = np.random.default_rng(seed)
    n = min(len(p), len(q))
    if n < folds:
        raise InvalidInputError(
            f"each sample set needs at least folds={folds} samples; got {n}"
        )
    if len(p) > n:
        p = p[rng.choice(len(p), size=n, replace=False)]
    if len(q) > n:
        q = q[rng.choice(len(q), size=n, replace=False)]

    if z_score:
        q = standardise(q, reference=p)  # before p is overwritten
        p = standardise(p)

    features = np.concatenate([p, q])
    labels = np.concatenate([np.zeros(n, dtype=int), np.ones(n, dtype=int)])
    dim = features.shape[1]
    random_state = int(rng.integers(2**31 - 1))
    if classifier == "rf":
        model = RandomForestClassifier(random_state=random_state)
    else:
        model = MLPClassifier(
            hidden_layer_sizes=(10 * dim, 10 * dim),
            activation="relu",
            solver="adam",
            max_iter=1000,
            random_state=random_state,
        )
    splitter = StratifiedKFold(n_splits=int(folds), shuffle=True, random_state=random_state)
    scores = cross_val_score(model, features, labels, cv=splitter, scoring="accuracy")
    return float(np.mean(scores))
