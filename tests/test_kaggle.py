"""`abovqa kaggle build|push`: push-ready folders the real kaggle CLI would accept, and a clear failure without credentials."""
import json
import os
import subprocess
import zipfile

import nbformat
import pytest

from abovqa.kaggle import STEPS, validate_kernel_metadata
from conftest import BIN, REPO

BUILT_STEPS = [s for s in STEPS if (REPO / "nbs" / "pipeline" / f"{s}.ipynb").exists()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("kaggle")
    for step in BUILT_STEPS:
        subprocess.run([str(BIN / "abovqa"), "kaggle", "build", step, "--out", str(out), "--user", "alice",
                        "--abo-dataset", "alice/amazon-berkeley-objects", "--params", "seed=7"], check=True, capture_output=True, text=True)
    return out


def test_every_pipeline_step_builds_a_valid_kernel(built):
    assert len(BUILT_STEPS) >= 4
    for step in BUILT_STEPS:
        folder = built / f"abovqa-{step.replace('_', '-')}"
        meta = validate_kernel_metadata(json.loads((folder / "kernel-metadata.json").read_text()), folder)
        assert meta["kernel_sources"] == [meta["id"]], "each kernel resumes from its own previous version"
        nb = nbformat.read(folder / meta["code_file"], as_version=4)
        assert nb.cells[0].source.startswith("# abovqa setup")
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and "seed = 7" in injected[0].source


def test_the_wheel_dataset_carries_the_package(built):
    folder = built / "abovqa-wheel"
    assert json.loads((folder / "dataset-metadata.json").read_text())["id"] == "alice/abovqa-wheel"
    [wheel] = folder.glob("abovqa-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"abovqa/core.py", "abovqa/curate.py", "abovqa/cli.py"} <= set(names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "abovqa = abovqa.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_push_without_credentials_fails_clearly(built, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env["HOME"] = str(tmp_path)
    folder = built / "abovqa-10-curate"
    run = subprocess.run([str(BIN / "abovqa"), "kaggle", "push", str(folder)], capture_output=True, text=True, env=env)
    assert run.returncode != 0
    assert "no Kaggle credentials" in run.stderr


def test_invalid_metadata_is_refused_before_upload(built, tmp_path):
    folder = built / "abovqa-50-evaluate"
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    (folder / "kernel-metadata.json").write_text(json.dumps(dict(meta, title="abc", dataset_sources=["abo"])))
    run = subprocess.run([str(BIN / "abovqa"), "kaggle", "push", str(folder)], capture_output=True, text=True)
    assert run.returncode != 0 and "title 'abc'" in run.stderr and "dataset source 'abo'" in run.stderr
