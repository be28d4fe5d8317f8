"""Shared fixtures: the repository root, its venv binaries, and an isolated cache per session."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session", autouse=True)
def offline_env(tmp_path_factory):
    "Tests never reach a hub, and build their tiny models and sample in a cache of their own."
    os.environ["ABOVQA_CACHE"] = str(tmp_path_factory.mktemp("abovqa-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")
    yield
