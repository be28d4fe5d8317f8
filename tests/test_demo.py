"""`abovqa demo`: the whole pipeline on the embedded sample, through the batch runner, as a new user runs it: the built
wheel pip-installed over Kaggle's preinstalled stack (the floor versions), run from an empty folder, offline."""
import json
import os
import re
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from abovqa.metrics import BLIND_RUNS
from conftest import IMAGE_CONSTRAINTS, REPO, _purelib, overlay_env, overlay_venv

DESIGN_FILES = ["curated/listings.parquet", "curated/dropped.parquet", "curated/stats.json", "qa/qa.parquet", "qa/qa.log.jsonl",
                "metrics/summary.csv", "report/index.html", "captions/captions.parquet", "metrics/captions_summary.csv",
                "figures/caption_gallery.png"]


@dataclass
class Demo:
    work: Path
    stdout: str
    venv: Path    # the overlay venv the wheel went into
    cwd: Path     # the empty folder the demo ran from
    image_untouched: bool

    def run(self, *args, timeout=600) -> subprocess.CompletedProcess:
        "Run `abovqa ARGS` of the overlay venv from the demo's folder, without network where this machine allows."
        return subprocess.run(_offline([str(self.venv / "bin" / "abovqa"), *args]), cwd=self.cwd, env=overlay_env(self.venv),
                              capture_output=True, text=True, timeout=timeout)

    def python(self, code: str) -> str:
        return subprocess.run([str(self.venv / "bin" / "python"), "-c", code], cwd=self.cwd, env=overlay_env(self.venv),
                              capture_output=True, text=True, check=True).stdout.strip()


def _offline(command: list) -> list:
    "`command` in a new network namespace with only loopback up (Jupyter kernels talk over it); as is where that needs root."
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
        return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
    warnings.warn("not root (or no unshare/ip): the demo runs WITH network access here; HF_HUB_OFFLINE=1 still applies")
    return command


def _floor_pins() -> dict:
    "The exact pins of kaggle/image-constraints.txt: {name: version}."
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", IMAGE_CONSTRAINTS.read_text(), re.M)
    return {name.lower(): version for name, version in pins}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, built_wheel, kaggle_image_python):
    root = tmp_path_factory.mktemp("demo")
    venv = root / "venv"
    overlay_venv(kaggle_image_python, venv)
    image_site = _purelib(kaggle_image_python)
    before = sorted(os.listdir(image_site))
    # what the image lacks comes from the package index (the only step that needs the network), under the image's pins
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              str(built_wheel), "-c", str(IMAGE_CONSTRAINTS)],
                             env=overlay_env(venv), capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    cwd = root / "empty"
    cwd.mkdir()
    work = root / "work"
    d = Demo(work, "", venv, cwd, sorted(os.listdir(image_site)) == before)
    started = time.monotonic()
    run = d.run("demo", "--work", str(work), timeout=1500)
    print(f"floor demo: {time.monotonic() - started:.0f} s")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    d.stdout = run.stdout
    return d


def test_demo_writes_every_stage_output(demo):
    work = demo.work
    for rel in DESIGN_FILES:
        assert (work / rel).is_file() and (work / rel).stat().st_size > 0, rel
    predictions = sorted((work / "predictions").glob("*.parquet"))
    assert predictions, "no predictions"
    blind = [f"{run}.parquet" for run in BLIND_RUNS]  # scored from the train split's answers, never written as predictions
    assert sorted(p.name for p in (work / "metrics").glob("*.parquet")) == sorted([p.name for p in predictions] + blind)
    assert any(p.suffix == ".png" for p in (work / "figures").iterdir())
    executed = sorted((work / "notebooks").rglob("*.ipynb"))
    assert len(executed) >= 4, executed


def test_demo_outputs_agree_with_each_other(demo):
    work = demo.work
    listings = pd.read_parquet(work / "curated" / "listings.parquet")
    qa = pd.read_parquet(work / "qa" / "qa.parquet")
    captions = pd.read_parquet(work / "captions" / "captions.parquet")
    assert set(qa.image_id) <= set(listings.image_id) and set(captions.image_id) <= set(listings.image_id)
    assert qa.qa_id.is_unique
    caption_runs = set(pd.read_csv(work / "metrics" / "captions_summary.csv")["run"])
    assert caption_runs and all(run.endswith("caption") for run in caption_runs)
    for path in (work / "predictions").glob("*.parquet"):
        preds = pd.read_parquet(path)
        references = captions if path.stem in caption_runs else qa
        assert set(preds.qa_id) <= set(references.qa_id) and preds.qa_id.is_unique
    stats = json.loads((work / "curated" / "stats.json").read_text())
    assert stats["kept"] == len(listings) == list(stats["steps"].values())[-1]


def test_demo_prints_the_summary_and_the_report_path(demo):
    summary = pd.read_csv(demo.work / "metrics" / "summary.csv")
    for run in summary["run"]:
        assert run in demo.stdout
    assert str(demo.work / "report" / "index.html") in demo.stdout


def test_demo_ran_from_the_wheel_on_the_floor_stack(demo):
    "The package and the pipeline notebooks came from the installed wheel, on Kaggle's versions, into the overlay only."
    package = Path(demo.python("import abovqa; print(abovqa.__file__)")).resolve()
    assert package.is_relative_to(demo.venv.resolve()) and not package.is_relative_to(REPO), package
    for status in (demo.work / "notebooks").glob("*/status.json"):
        notebook = Path(json.loads(status.read_text())["notebook"]).resolve()
        assert notebook.is_relative_to(package.parent / "nbs" / "pipeline"), notebook
    pins = _floor_pins()
    assert {"transformers", "pandas", "numpy"} <= set(pins)
    code = f"import importlib.metadata as m, json; print(json.dumps({{n: m.version(n) for n in {sorted(pins)!r}}}))"
    assert json.loads(demo.python(code)) == pins
    assert demo.image_untouched, "installing the wheel changed the image venv"


def test_demo_rerun_skips_finished_steps(demo):
    work = demo.work
    before = {p: p.stat().st_mtime_ns for p in (work / "notebooks").rglob("*.ipynb")}
    run = demo.run("demo", "--work", str(work))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (work / "notebooks").rglob("*.ipynb")} == before, "finished steps were run again"
