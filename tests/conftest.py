"""Shared fixtures: where the OpenEEW recordings are.

Tests that need the recordings fail (never skip) when they are missing, so that a CI run
without the data cannot pass by testing nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from yujing.sources.openeew import ENV_DATA_DIR, default_data_dir


@pytest.fixture(scope="session")
def openeew_dir() -> Path:
    """The OpenEEW data folder (devices.json, catalog.csv, events/)."""
    data = default_data_dir()
    if not (data / "devices.json").is_file() or not (data / "events").is_dir():
        pytest.fail(
            f"OpenEEW recordings not found at {data} (need devices.json and events/); "
            f"set {ENV_DATA_DIR} to the folder holding them"
        )
    return data


def load_script(path: Path, name: str):
    """Import a file of scripts/ (no package) as module ``name``, once. The module is put in
    sys.modules before it runs: dataclasses look their module up there."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]
