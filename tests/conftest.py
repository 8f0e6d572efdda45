"""Shared test fixtures and paths."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
ORACLE_DIR = SHARED_DIR / "oracle"
AUDIO_DIR = SHARED_DIR / "audio"


@pytest.fixture
def oracle_dir() -> Path:
    if not ORACLE_DIR.is_dir():
        pytest.skip("../shared/oracle is not beside the checkout")
    return ORACLE_DIR


@pytest.fixture
def audio_dir() -> Path:
    if not AUDIO_DIR.is_dir():
        pytest.skip("../shared/audio is not beside the checkout")
    return AUDIO_DIR
