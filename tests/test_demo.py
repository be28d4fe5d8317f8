"""`abovqa demo`: the whole pipeline on the embedded sample, through the batch runner, as a user runs it."""
import json
import subprocess

import pandas as pd
import pytest

from abovqa.metrics import BLIND_RUNS
from conftest import BIN

DESIGN_FILES = ["curated/listings.parquet", "curated/dropped.parquet", "curated/stats.json", "qa/qa.parquet", "qa/qa.log.jsonl",
                "metrics/summary.csv", "report/index.html", "captions/captions.parquet", "metrics/captions_summary.csv",
                "figures/caption_gallery.png"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "work"
    run = subprocess.run([str(BIN / "abovqa"), "demo", "--work", str(work)], capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return work, run.stdout


def test_demo_writes_every_stage_output(demo):
    work, _ = demo
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
    work, _ = demo
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
    work, stdout = demo
    summary = pd.read_csv(work / "metrics" / "summary.csv")
    for run in summary["run"]:
        assert run in stdout
    assert str(work / "report" / "index.html") in stdout


def test_demo_rerun_skips_finished_steps(demo):
    work, _ = demo
    before = {p: p.stat().st_mtime_ns for p in (work / "notebooks").rglob("*.ipynb")}
    run = subprocess.run([str(BIN / "abovqa"), "demo", "--work", str(work)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (work / "notebooks").rglob("*.ipynb")} == before, "finished steps were run again"
