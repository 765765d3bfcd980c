"""Shared fixtures: where the OpenEEW recordings are.

Tests that need the recordings fail (never skip) when they are missing, so that a CI run
without the data cannot pass by testing nothing.
"""

from __future__ import annotations

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
