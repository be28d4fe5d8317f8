"""`abovqa kaggle build|push`: push-ready folders the real kaggle CLI would accept, and a clear failure without credentials."""
import json
import os
import subprocess
import zipfile

import nbformat
import pytest

from abovqa.kaggle import STEPS, kernel_id, notebook_defaults, validate_kernel_metadata
from abovqa.runs import PIPELINE
from conftest import BIN, REPO

BUILT_STEPS = [s for s in STEPS if (REPO / "nbs" / "pipeline" / f"{s}.ipynb").exists()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    "Every step built at once, as a user would (no wheelhouse here: the Kaggle simulation builds and uses one)."
    out = tmp_path_factory.mktemp("kaggle")
    run = subprocess.run([str(BIN / "abovqa"), "kaggle", "build", "--all", "--no-deps", "--out", str(out), "--user", "alice",
                          "--abo-dataset", "alice/amazon-berkeley-objects", "--params", "seed=7", "size=full",
                          "20_generate_qa.backend=gemini"], capture_output=True, text=True, cwd=tmp_path_factory.mktemp("cwd"))
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run.stdout


def test_every_pipeline_step_builds_a_valid_kernel_wired_to_its_upstream(built):
    out, _ = built
    assert set(STEPS) == set(PIPELINE)
    for step in STEPS:
        folder = out / step
        meta = validate_kernel_metadata(json.loads((folder / "kernel-metadata.json").read_text()), folder)
        assert meta["kernel_sources"] == [kernel_id(s, "alice") for s in PIPELINE[step]] + [meta["id"]], \
            "each kernel reads its upstream kernels' outputs and resumes from its own previous version"
        nb = nbformat.read(folder / meta["code_file"], as_version=4)
        assert nb.cells[0].source.startswith("# abovqa setup") and "output_report" in nb.cells[-1].source
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and ("seed = 7" in injected[0].source) == ("seed" in notebook_defaults(step))
    curate = [c for c in nbformat.read(out / "10_curate" / "10_curate.ipynb", as_version=4).cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert 'abo_root = "/kaggle/input/amazon-berkeley-objects"' in curate[0].source


def test_steps_that_need_the_internet_get_it_and_the_build_says_why(built):
    out, stdout = built
    meta = {s: json.loads((out / s / "kernel-metadata.json").read_text()) for s in STEPS}
    assert meta["20_generate_qa"]["enable_internet"] and "20_generate_qa: internet on: the gemini backend" in stdout
    assert meta["30_baselines"]["enable_internet"] and "blip-vqa-base at full size downloads its weights" in stdout
    assert not meta["10_curate"]["enable_internet"] and not meta["60_error_analysis"]["enable_internet"]
    assert meta["41_finetune_qlora"]["docker_image_pinning_type"] == "original"


def test_the_wheel_dataset_carries_the_package_and_the_tree_stays_clean(built):
    folder = built[0] / "abovqa-wheel"
    assert json.loads((folder / "dataset-metadata.json").read_text())["id"] == "alice/abovqa-wheel"
    [wheel] = folder.glob("abovqa-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"abovqa/core.py", "abovqa/curate.py", "abovqa/cli.py", "abovqa/nbs/pipeline/10_curate.ipynb"} <= set(names)
    assert "abovqa/_kit/kaggle/image-constraints.txt" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "abovqa = abovqa.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not (REPO / "build").exists(), "the build ran in a temporary copy"


def test_push_without_credentials_fails_clearly(built, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env["HOME"] = str(tmp_path)
    folder = built[0] / "10_curate"
    run = subprocess.run([str(BIN / "abovqa"), "kaggle", "push", str(folder)], capture_output=True, text=True, env=env)
    assert run.returncode != 0
    assert "no Kaggle credentials" in run.stderr


def test_invalid_metadata_is_refused_before_upload(built, tmp_path):
    folder = built[0] / "50_evaluate"
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    (folder / "kernel-metadata.json").write_text(json.dumps(dict(meta, title="abc", dataset_sources=["abo"])))
    run = subprocess.run([str(BIN / "abovqa"), "kaggle", "push", str(folder)], capture_output=True, text=True)
    assert run.returncode != 0 and "title 'abc'" in run.stderr and "dataset source 'abo'" in run.stderr
