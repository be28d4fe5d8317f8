"""Shared fixtures: the repository root, its venv binaries, and an isolated cache per session."""
import os
import shutil
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


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Path:
    "A curated sample with template questions, shared read-only by the tests (each copies what it changes)."
    from abovqa.curate import curate
    from abovqa.qagen import generate
    from abovqa.sample import sample_root
    work = tmp_path_factory.mktemp("study")
    curate(sample_root(), work)
    generate(work)
    return work


def fresh_work(study: Path, tmp_path: Path, name: str = "w") -> Path:
    "A private work dir holding a copy of the study's curated/ and qa/ stages."
    work = tmp_path / name
    for stage in ("curated", "qa"):
        shutil.copytree(study / stage, work / stage)
    return work


def kill_mid_run(script: Path, work: Path, cache: Path, at_least: int, timeout: float = 120) -> int:
    "Run `python script work`, SIGKILL it once `cache` holds `at_least` records, and return how many it holds then."
    import os
    import signal
    import subprocess
    import time
    proc = subprocess.Popen([sys.executable, str(script), str(work)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    count = lambda: sum(1 for p in cache.glob("*.jsonl") for _ in open(p))
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if count() >= at_least:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stdout.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return count()
