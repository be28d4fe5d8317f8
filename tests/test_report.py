"""abovqa.report: every figure drawn from predictions files is a real, non-empty image; the report ties them together and
reads at 1280 px in a real browser (Debian's chromium, headless); the error-analysis pipeline notebook runs under papermill."""
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import BIN, REPO
from abovqa.core import atomic_write_json, atomic_write_parquet
from abovqa.metrics import evaluate
from abovqa.report import (FIGURE_ORDER, comparison_pairs, error_examples, leaderboard, load_training_logs, make_figures, run_colors,
                           write_report)

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.fixture
def study(tmp_path):
    """Questions about real image files (160 test, 80 train: the blind baselines' priors), a pretrained and a fine-tuned run
    (with a checkpoint's trainer_state.json) answering the test questions."""
    rng = np.random.default_rng(3)
    colors = ["red", "blue", "green", "black"]
    n = 240
    qa = pd.DataFrame({"qa_id": [f"q{i:03d}" for i in range(n)], "split": ["test"] * 160 + ["train"] * 80,
                       "qtype": ["color", "shape", "count", "yesno"] * (n // 4), "difficulty": ["easy", "medium", "hard"] * (n // 3),
                       "item_id": [f"i{i % 8}" for i in range(n)], "image_path": [f"{i % 8:02d}/{i % 8}.jpg" for i in range(n)]})
    qa["question"] = qa["qtype"].map({"color": "What color is it?", "shape": "What shape is it?", "count": "How many?", "yesno": "Is it red?"})
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
    state = {"global_step": 40, "log_history": [{"step": s, "loss": 2.0 / s, "learning_rate": 1e-3 * (1 - s / 40)} for s in range(1, 41, 4)]
             + [{"step": 40, "eval_loss": 0.4}]}
    atomic_write_json(tmp_path / "checkpoints" / "blip-lora" / "checkpoint-40" / "trainer_state.json", state)
    atomic_write_json(tmp_path / "checkpoints" / "blip-lora" / "checkpoint-20" / "trainer_state.json", {"global_step": 20, "log_history": state["log_history"][:5]})
    test = qa[qa["split"] == "test"]
    for run, skill in [("blip-base", 0.3), ("blip-lora", 0.85)]:
        right = rng.random(len(test)) < skill
        answers = np.where(right, test["answer"], rng.choice(["white", "square", "it is probably red", "7", ""], len(test)))
        preds = pd.DataFrame({"qa_id": test["qa_id"], "run": run, "model": "blip-vqa-base", "prompt_version": "v1", "raw": answers,
                              "answer": answers, "ok": True, "error": None, "batch_size": 8, "seconds": 0.01})
        atomic_write_parquet(preds, tmp_path / "predictions" / f"{run}.parquet")
    evaluate(tmp_path, semantic=False, bertscore_model=None, bart_model="tiny", n_boot=100, verbose=False)
    return tmp_path


def test_every_figure_is_a_real_image_and_the_report_ties_them(study):
    summary = pd.read_csv(study / "metrics" / "summary.csv")
    assert dict(zip(summary["run"], summary["kind"])) == {"blip-base": "pretrained", "blip-lora": "fine-tuned",
                                                           "blind-qtype-majority": "blind", "blind-question-prior": "blind"}
    paths = make_figures(study, top_k=8, n_boot=100)
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
    assert page.count("<figure>") == len(vqa_figures) and page.count("data:image/jpeg") == 8  # figures + side-by-side thumbnails
    assert "blip-lora vs blip-base" in page and "McNemar" in page and 'alt="product type accuracy"' in page and "Answer forms" in page
    assert "<h2>Not computed</h2>" in page and "bertscore_f1" in page and "turned off" in page  # each skipped metric with its reason
    colors = run_colors(summary)
    assert len(set(colors.values())) == 4 and colors["blind-qtype-majority"] != colors["blip-base"]


def test_error_examples_training_logs_and_pairs(study):
    examples = error_examples(study, "blip-base", k=8)
    assert len(examples) == 8 and (examples["exact_match"] < 1).all() and set(examples["qtype"]) == {"color", "shape", "count", "yesno"}
    assert error_examples(study, "blip-base", k=8).equals(examples)   # reproducible
    logs = load_training_logs(study)
    assert set(logs["run"]) == {"blip-lora"} and logs["step"].max() == 40 and logs["eval_loss"].notna().sum() == 1
    assert comparison_pairs(pd.read_csv(study / "metrics" / "summary.csv")) == [("blip-base", "blip-lora")]  # blind runs are no base
    board = leaderboard(study, n_boot=100).set_index("run")
    assert board.index[0] == "blip-lora" and list(board["kind"]) == ["fine-tuned", "pretrained", "blind", "blind"]
    assert board.loc["blip-lora", "gain_vs"] == "blip-base" and board.loc["blip-lora", "gain_lo"] > 0 and board.loc["blip-lora", "gain_p"] < 0.001
    assert board.loc["blip-base", "over_blind_vs"].startswith("blind-") and pd.isna(board.loc["blip-base", "gain"])


def test_error_analysis_pipeline_notebook(study, tmp_path):
    out = tmp_path / "60.ipynb"
    subprocess.run([str(BIN / "papermill"), "-k", "python3", str(REPO / "nbs/pipeline/60_error_analysis.ipynb"), str(out),
                    "-p", "work", str(study), "-p", "top_k", "6", "-p", "n_boot", "100", "--log-level", "ERROR"],
                   check=True, cwd=tmp_path, capture_output=True, timeout=300)
    text = out.read_text()
    assert "blip-lora vs blip-base: 160 shared questions" in text and "p_mcnemar" in text
    assert (study / "figures" / "error_gallery.png").exists()
    assert json.loads((study / "metrics" / "compare" / "blip-base__vs__blip-lora.json").read_text())["metrics"]["exact_match"]["delta"] > 0


PROBE = """<script>
document.addEventListener("DOMContentLoaded", () => document.querySelectorAll("details").forEach(d => d.open = true));
addEventListener("load", () => {
  const b = document.body, page = document.documentElement, board = document.getElementById("leaderboard");
  b.dataset.scrollWidth = page.scrollWidth;
  b.dataset.images = document.images.length;
  b.dataset.broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
  b.dataset.firstTable = document.querySelector("table").id;
  b.dataset.boardFits = board.scrollWidth <= board.parentElement.clientWidth && board.getBoundingClientRect().right <= page.clientWidth;
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install -y chromium")
def test_the_report_reads_at_1280_px_in_a_browser(study, tmp_path):
    "Every <details> opened, at 1280 px: no horizontal overflow, every image decoded, the leaderboard the first table and whole."
    make_figures(study, top_k=8, n_boot=100)
    report = write_report(study, n_boot=100)
    page = report.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,900",
                           "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probed.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", done.stdout).group(1)
    seen = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
    assert seen, "the probe did not run"
    assert int(seen["scroll-width"]) <= 1280, f"the page is {seen['scroll-width']} px wide"
    assert int(seen["images"]) == page.count("<img") >= len(FIGURE_ORDER) - 2 and seen["broken"] == "0"
    assert seen["first-table"] == "leaderboard" and seen["board-fits"] == "true"


def test_the_leaderboard_shows_the_ood_split_as_its_own_column(study):
    "Questions of the held-out product types (curate's holdout_types: split test_ood) get their own exact-match column."
    from abovqa.curate import OOD_SPLIT
    board = leaderboard(study, n_boot=50)
    assert not any("ood" in c for c in board.columns)
    page = write_report(study, compare=False, n_boot=50).read_text()
    assert "exact match (ood)" not in page, "absent when the study has no OOD split"
    qa = pd.read_parquet(study / "qa" / "qa.parquet")
    qa.loc[(qa["item_id"] == "i1") & (qa["split"] == "test"), "split"] = OOD_SPLIT  # one product's test questions, now out of distribution
    atomic_write_parquet(qa, study / "qa" / "qa.parquet")
    evaluate(study, semantic=False, bertscore_model=None, wordnet=False, n_boot=50, verbose=False)
    board = leaderboard(study, n_boot=50).set_index("run")
    n_ood = (qa["split"] == OOD_SPLIT).sum()
    assert (board["n_ood"] == n_ood).all() and board["exact_match_ood"].between(0, 1).all()
    scored = pd.read_parquet(study / "metrics" / "blip-lora.parquet")
    assert board.loc["blip-lora", "exact_match_ood"] == pytest.approx(scored.loc[scored["split"] == OOD_SPLIT, "exact_match"].mean())
    assert board.loc["blip-lora", "exact_match_ood_lo"] <= board.loc["blip-lora", "exact_match_ood"] <= board.loc["blip-lora", "exact_match_ood_hi"]
    page = write_report(study, compare=False, n_boot=50).read_text()
    head = page[page.index("<table class='board'"):page.index("</thead>")]
    assert "exact match (ood)" in head and f"n={n_ood:,} " in page
