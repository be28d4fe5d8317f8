"""abovqa.report: every figure drawn from predictions files is a real, non-empty image; the report ties them together;
the error-analysis pipeline notebook runs under papermill."""
import json
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import BIN, REPO
from abovqa.core import atomic_write_json, atomic_write_parquet
from abovqa.metrics import evaluate
from abovqa.report import (FIGURE_ORDER, comparison_pairs, error_examples, load_training_logs, make_figures, write_report)


@pytest.fixture
def study(tmp_path):
    "Questions about real image files, a pretrained and a fine-tuned run (with a checkpoint's trainer_state.json)."
    rng = np.random.default_rng(3)
    colors = ["red", "blue", "green", "black"]
    n = 160
    qa = pd.DataFrame({"qa_id": [f"q{i:03d}" for i in range(n)], "question": "What color is it?", "split": "test",
                       "qtype": ["color", "shape", "count", "yesno"] * (n // 4), "item_id": [f"i{i % 8}" for i in range(n)],
                       "image_path": [f"{i % 8:02d}/{i % 8}.jpg" for i in range(n)]})
    qa["answer"] = [colors[i % 4] if t == "color" else "round" if t == "shape" else str(i % 3 + 1) if t == "count" else "yes"
                    for i, t in enumerate(qa["qtype"])]
    atomic_write_parquet(qa, tmp_path / "qa" / "qa.parquet")
    root = tmp_path / "abo" / "images" / "small"
    for i in range(8):
        (root / f"{i:02d}").mkdir(parents=True)
        Image.new("RGB", (48, 40), colors[i % 4]).save(root / f"{i:02d}" / f"{i}.jpg")
    atomic_write_json(tmp_path / "curated" / "stats.json", {"images_root": str(root)})
    atomic_write_parquet(pd.DataFrame({"item_id": [f"i{i}" for i in range(8)], "product_type": ["CHAIR", "SOFA"] * 4}),
                         tmp_path / "curated" / "listings.parquet")
    state = {"global_step": 40, "log_history": [{"step": s, "loss": 2.0 / s} for s in range(1, 41, 4)] + [{"step": 40, "eval_loss": 0.4}]}
    atomic_write_json(tmp_path / "checkpoints" / "blip-lora" / "checkpoint-40" / "trainer_state.json", state)
    atomic_write_json(tmp_path / "checkpoints" / "blip-lora" / "checkpoint-20" / "trainer_state.json", {"global_step": 20, "log_history": state["log_history"][:5]})
    for run, skill in [("blip-base", 0.3), ("blip-lora", 0.85)]:
        right = rng.random(n) < skill
        answers = np.where(right, qa["answer"], rng.choice(["white", "square", "it is probably red", "7", ""], n))
        preds = pd.DataFrame({"qa_id": qa["qa_id"], "run": run, "model": "blip-vqa-base", "prompt_version": "v1", "raw": answers,
                              "answer": answers, "ok": True, "error": None, "batch_size": 8, "seconds": 0.01})
        atomic_write_parquet(preds, tmp_path / "predictions" / f"{run}.parquet")
    evaluate(tmp_path, semantic=False, bart_model="tiny", n_boot=100, verbose=False)
    return tmp_path


def test_every_figure_is_a_real_image_and_the_report_ties_them(study):
    summary = pd.read_csv(study / "metrics" / "summary.csv")
    assert dict(zip(summary["run"], summary["kind"])) == {"blip-base": "pretrained", "blip-lora": "fine-tuned"}
    paths = make_figures(study, top_k=8)
    names = {p.stem for p in paths}
    vqa_figures = set(FIGURE_ORDER[1:]) - {"caption_gallery"}  # a VQA-only study: no caption gallery
    assert names == vqa_figures, sorted(vqa_figures - names)
    for png in (p for p in paths if p.suffix == ".png"):
        with Image.open(png) as img:
            img.load()
            assert img.width > 200 and img.height > 150
            assert np.unique(np.asarray(img.convert("L").resize((64, 64)))).size > 5, f"{png.name} looks blank"
    svg = (study / "figures" / "error_gallery.svg").read_text()
    assert "<image" in svg and "true: " in svg   # the gallery embeds the pictures and their answers
    page = write_report(study, n_boot=100).read_text()
    assert page.count("<img") == len(vqa_figures)
    assert "blip-lora vs blip-base" in page and "McNemar" in page and "By product type" in page and "Answer forms" in page


def test_error_examples_training_logs_and_pairs(study):
    examples = error_examples(study, "blip-base", k=8)
    assert len(examples) == 8 and (examples["exact_match"] < 1).all() and set(examples["qtype"]) == {"color", "shape", "count", "yesno"}
    assert error_examples(study, "blip-base", k=8).equals(examples)   # reproducible
    logs = load_training_logs(study)
    assert set(logs["run"]) == {"blip-lora"} and logs["step"].max() == 40 and logs["eval_loss"].notna().sum() == 1
    assert comparison_pairs(pd.read_csv(study / "metrics" / "summary.csv")) == [("blip-base", "blip-lora")]


def test_error_analysis_pipeline_notebook(study, tmp_path):
    out = tmp_path / "60.ipynb"
    subprocess.run([str(BIN / "papermill"), "-k", "python3", str(REPO / "nbs/pipeline/60_error_analysis.ipynb"), str(out),
                    "-p", "work", str(study), "-p", "top_k", "6", "-p", "n_boot", "100", "--log-level", "ERROR"],
                   check=True, cwd=tmp_path, capture_output=True, timeout=300)
    text = out.read_text()
    assert "blip-lora vs blip-base: 160 shared questions" in text and "p_mcnemar" in text
    assert (study / "figures" / "error_gallery.png").exists()
    assert json.loads((study / "metrics" / "compare" / "blip-base__vs__blip-lora.json").read_text())["metrics"]["exact_match"]["delta"] > 0
