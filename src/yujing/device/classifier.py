"""Earthquake or human motion? A tiny MLP over :mod:`yujing.device.features`, in numpy.

The device agent runs it on the window around each picker trigger and sends the trigger
only when :meth:`EarthquakeClassifier.is_earthquake` says so. Inference needs numpy and
scipy only (no scikit-learn); the weights ship as ``yujing/data/classifier.npz`` and are
rebuilt by ``python scripts/train_classifier.py`` (see ``docs/classifier.md`` for the data,
the held-out numbers and how the threshold was chosen).

``classifier.npz`` holds:

* ``feature_names`` — the feature order the weights expect (checked against
  :data:`yujing.device.features.FEATURE_NAMES` on load);
* ``mean``, ``scale`` — standardisation of the features;
* ``W0, b0, W1, b1, ...`` — dense layers, ReLU between them, a logistic output;
* ``threshold`` — probability at and above which a window is called an earthquake
  (chosen on the training split);
* ``window_post_s`` — seconds after the onset the features were computed over; the
  packaged model must match :data:`yujing.device.features.WINDOW_POST_S`, the length
  the device agent waits for (checked on load);
* ``meta`` — JSON text: provenance, training summary and held-out numbers.

``classifier_early.npz`` is the same kind of model over the first
:data:`~yujing.device.features.EARLY_WINDOW_POST_S` after the onset, with a stricter
threshold (:meth:`EarthquakeClassifier.load_early`): the agent's early decision.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

from .features import EARLY_WINDOW_POST_S, FEATURE_NAMES, WINDOW_POST_S, window_features

__all__ = ["EarthquakeClassifier", "DEFAULT_MODEL_FILE", "EARLY_MODEL_FILE"]

DEFAULT_MODEL_FILE = "classifier.npz"
EARLY_MODEL_FILE = "classifier_early.npz"
#: the window each packaged model must have been trained on (checked on load)
_PACKAGED_WINDOW_S = {DEFAULT_MODEL_FILE: WINDOW_POST_S, EARLY_MODEL_FILE: EARLY_WINDOW_POST_S}


class EarthquakeClassifier:
    """A small multilayer perceptron: standardise, (dense + ReLU) x k, dense + logistic."""

    def __init__(
        self, mean, scale, weights, biases, threshold: float, meta: str = "", window_post_s: float = WINDOW_POST_S
    ):
        self.window_post_s = float(window_post_s)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.weights = [np.asarray(w, dtype=np.float64) for w in weights]
        self.biases = [np.asarray(b, dtype=np.float64) for b in biases]
        self.threshold = float(threshold)
        self.meta = meta
        if len(self.weights) != len(self.biases) or not self.weights:
            raise ValueError("need as many bias vectors as weight matrices, at least one")
        if self.mean.shape != (len(FEATURE_NAMES),) or self.scale.shape != self.mean.shape:
            raise ValueError("standardisation does not match the feature count")
        if self.weights[-1].shape[1] != 1:
            raise ValueError("the last layer must have one output")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")

    # loading ------------------------------------------------------------------------
    @classmethod
    def from_npz(cls, path) -> "EarthquakeClassifier":
        with np.load(path, allow_pickle=False) as z:
            names = tuple(str(s) for s in z["feature_names"])
            if names != FEATURE_NAMES:
                raise ValueError(
                    f"{path}: weights were trained on features {names}, "
                    f"this code computes {FEATURE_NAMES}; retrain with scripts/train_classifier.py"
                )
            if "window_post_s" not in z.files:
                raise ValueError(f"{path}: no window_post_s; retrain with scripts/train_classifier.py")
            n = int(z["n_layers"])
            return cls(
                z["mean"],
                z["scale"],
                [z[f"W{i}"] for i in range(n)],
                [z[f"b{i}"] for i in range(n)],
                float(z["threshold"]),
                str(z["meta"]) if "meta" in z.files else "",
                float(z["window_post_s"]),
            )

    @classmethod
    def load(cls, name: str = DEFAULT_MODEL_FILE) -> "EarthquakeClassifier":
        """The classifier shipped in the package (``yujing/data/<name>``), cached."""
        return _load_packaged(name)

    @classmethod
    def load_early(cls) -> "EarthquakeClassifier":
        """The shipped early-decision model (``EARLY_WINDOW_POST_S`` after the onset), cached."""
        return _load_packaged(EARLY_MODEL_FILE)

    def save(self, path) -> None:
        arrays = {
            "feature_names": np.array(FEATURE_NAMES),
            "mean": self.mean,
            "scale": self.scale,
            "n_layers": np.array(len(self.weights)),
            "threshold": np.array(self.threshold),
            "window_post_s": np.array(self.window_post_s),
            "meta": np.array(self.meta),
        }
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            arrays[f"W{i}"] = w.astype(np.float32)
            arrays[f"b{i}"] = b.astype(np.float32)
        np.savez_compressed(path, **arrays)

    @property
    def meta_dict(self) -> dict:
        try:
            return json.loads(self.meta)
        except ValueError:
            return {}

    # inference ----------------------------------------------------------------------
    def probability_from_features(self, features) -> np.ndarray:
        """Earthquake probability for feature rows (shape (n, F) or (F,))."""
        f = np.asarray(features, dtype=np.float64)
        single = f.ndim == 1
        h = np.atleast_2d(f)
        h = (h - self.mean) / self.scale
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b
            if i < last:
                np.maximum(h, 0.0, out=h)
        z = np.clip(h[:, 0], -60.0, 60.0)
        p = 1.0 / (1.0 + np.exp(-z))
        return p[0] if single else p

    def probability(self, acc, sample_rate_hz: float, units: str = "gal") -> float:
        """Earthquake probability of one trigger window (see
        :func:`yujing.device.features.window_features` for ``acc`` and ``units``); the
        window must reach :attr:`window_post_s` after the onset."""
        return float(self.probability_from_features(window_features(acc, sample_rate_hz, units, self.window_post_s)))

    def is_earthquake(self, acc, sample_rate_hz: float, units: str = "gal") -> bool:
        """True when the window's probability reaches the shipped threshold."""
        return self.probability(acc, sample_rate_hz, units) >= self.threshold


@functools.lru_cache(maxsize=4)
def _load_packaged(name: str) -> EarthquakeClassifier:
    ref = resources.files("yujing").joinpath("data", name)
    with resources.as_file(ref) as path:
        model = EarthquakeClassifier.from_npz(path)
    want = _PACKAGED_WINDOW_S.get(name, WINDOW_POST_S)
    if abs(model.window_post_s - want) > 1e-9:
        raise ValueError(
            f"yujing/data/{name} was trained on {model.window_post_s:g} s after the onset, but "
            f"the agent reads it at {want:g} s; retrain with scripts/train_classifier.py"
        )
    return model
