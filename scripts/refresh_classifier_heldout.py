"""Recompute the held-out figures stored with a shipped classifier, without retraining.

    python scripts/refresh_classifier_heldout.py [--model classifier.npz]

The held-out windows are cut at the picker's onsets, so a picker change moves them (a
warm-up trigger that is gone is one activity window fewer) while the model is the same.
tests/test_classifier.py checks that the stored figures are the ones this code computes;
this rewrites the ``heldout`` block of the model's metadata with them (same split, same
threshold, same weights) and prints what changed. Retraining
(scripts/train_classifier.py) is the other way, and changes the model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="classifier.npz", help="a model shipped in src/yujing/data (default classifier.npz)")
    ap.add_argument("--data", default=None, help="OpenEEW folder (default: ../shared/data/openeew)")
    a = ap.parse_args(argv)
    spec = importlib.util.spec_from_file_location("train_classifier", ROOT / "scripts/train_classifier.py")
    T = importlib.util.module_from_spec(spec)
    sys.modules["train_classifier"] = T  # its dataclasses look themselves up there
    spec.loader.exec_module(T)
    from yujing.device.classifier import EarthquakeClassifier
    from yujing.sources.openeew import default_data_dir

    model = EarthquakeClassifier.load(a.model)
    path = ROOT / "src/yujing/data" / a.model
    held, _ = T.heldout_windows(Path(a.data) if a.data else default_data_dir(), with_sim=True)
    p = model.probability_from_features(T.featurize(held, model.window_post_s))
    thr = model.threshold
    real_q = [i for i, w in enumerate(held) if w.source == "openeew-P"]
    real_h = [i for i, w in enumerate(held) if w.label == 0 and not w.source.startswith(("sim-", "openeew"))]
    new = {
        "earthquake_recall_openeew_P": float(np.mean(p[real_q] >= thr)),
        "earthquake_P_windows": len(real_q),
        "false_trigger_rate_per_activity_window": float(np.mean(p[real_h] >= thr)),
        "activity_windows": len(real_h),
        "by_source": T.rates_by_source(p, held, thr),
    }
    z = dict(np.load(path, allow_pickle=False))
    meta = json.loads(str(z["meta"]))
    old = meta["heldout"]
    for k in ("earthquake_recall_openeew_P", "earthquake_P_windows", "false_trigger_rate_per_activity_window", "activity_windows"):
        if old.get(k) != new[k]:
            print(f"{k}: {old.get(k)} -> {new[k]}")
    for src, r in new["by_source"].items():
        if old.get("by_source", {}).get(src) != r:
            print(f"by_source[{src}]: {old.get('by_source', {}).get(src)} -> {r}")
    meta["heldout"] = {**old, **new}
    z["meta"] = np.array(json.dumps(meta, sort_keys=True))
    np.savez_compressed(path, **z)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
