"""Captioning on the sample with tiny models: an oversized image is captioned, not fatal; a killed caption run resumes exactly."""
import json
import shutil
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import kill_mid_run

from abovqa.captions import generate_captions
from abovqa.infer import load_questions, predict, select_questions

SAME = ["qa_id", "raw", "answer", "ok", "error"]
SELECTION = dict(split="all", frac=0.25)  # ~40 images: enough for a run to be killed in the middle


@pytest.fixture(scope="module")
def caption_template(study, tmp_path_factory) -> Path:
    "The study's curated sample with reference captions, its images copied privately, one of them replaced by a 12,000 px JPEG."
    work = tmp_path_factory.mktemp("captions") / "work"
    shutil.copytree(study / "curated", work / "curated")
    stats_path = work / "curated" / "stats.json"
    stats = json.loads(stats_path.read_text())
    root = Path(shutil.copytree(stats["images_root"], work / "images"))
    stats["images_root"] = str(root)
    stats_path.write_text(json.dumps(stats))
    generate_captions(work, verbose=False)
    selected = select_questions(load_questions(work, "caption"), **SELECTION)
    huge = selected.image_path.iloc[0]
    Image.new("RGB", (12000, 12000), (30, 90, 200)).save(root / huge, quality=30)
    (work / "huge.txt").write_text(huge)
    return work


@pytest.fixture
def caption_work(caption_template, tmp_path) -> Path:
    return Path(shutil.copytree(caption_template, tmp_path / "work", ignore=shutil.ignore_patterns("images")))


def test_an_oversized_image_is_captioned_not_fatal(caption_work):
    huge = (caption_work / "huge.txt").read_text()
    preds = predict(caption_work, "blip-caption-base", task="caption", batch_size=4, progress=False, **SELECTION)
    stats = preds.attrs["stats"]
    refs = load_questions(caption_work, "caption").set_index("qa_id")
    assert stats["task"] == "caption" and stats["complete"] and len(preds) == stats["n_selected"] >= 30
    assert preds.ok.all(), preds[~preds.ok][["qa_id", "error"]]
    assert preds.qa_id.map(refs["image_path"]).eq(huge).sum() == 1, "the 12,000 px image was among the captioned"
    assert stats["run"] == "blip-caption-base-tiny-caption-all-25pct"  # another split and a fraction: a run of its own
    assert (caption_work / "predictions" / f"{stats['run']}.parquet").exists()


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from abovqa.infer import predict
    from abovqa.models import BlipCaptionAdapter, get_spec

    class SlowCaptioner(BlipCaptionAdapter):  # slow enough to be killed mid-run; same weights, same cache keys
        def predict(self, items):
            time.sleep(0.2)
            return super().predict(items)

    predict(sys.argv[1], SlowCaptioner(get_spec("blip-caption-base"), task="caption"), batch_size=2, run="killed",
            split="all", frac=0.25, progress=False)
""")


def test_sigkill_mid_caption_run_then_resume_gives_the_uninterrupted_result(caption_work, tmp_path):
    reference = predict(shutil.copytree(caption_work, tmp_path / "reference"), "blip-caption-base", task="caption", batch_size=2,
                        run="killed", progress=False, **SELECTION)
    script = tmp_path / "slow_captions.py"
    script.write_text(KILL_SCRIPT)
    cache = caption_work / "predictions" / ".cache" / "killed"
    n_done = kill_mid_run(script, caption_work, cache, at_least=8)
    assert not (caption_work / "predictions" / "killed.parquet").exists(), "killed before writing the file"
    assert 8 <= n_done < len(reference)

    resumed = predict(caption_work, "blip-caption-base", task="caption", batch_size=2, run="killed", progress=False, **SELECTION)
    stats = resumed.attrs["stats"]
    assert stats["n_cached"] >= 8 and stats["n_computed"] == len(reference) - stats["n_cached"]
    pd.testing.assert_frame_equal(resumed[SAME], reference[SAME])
    assert resumed.ok.all() and (resumed.prompt_version == "caption-unconditional@c1/caption_text").all()


def test_models_that_cannot_caption_are_refused_with_the_ones_that_can(caption_work):
    with pytest.raises(ValueError, match="models for 'caption': .*florence-2"):
        predict(caption_work, "vilt-b32-vqa", task="caption", progress=False)
    assert not list(caption_work.glob("predictions/*.parquet")), "nothing is written for a refused model"
