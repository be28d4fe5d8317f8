"""abovqa.infer with real tiny models on real files: cache, kill/resume, OOM backoff, bad images, workers, notebook."""
import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageDraw

from conftest import BIN, REPO, kill_mid_run

from abovqa.core import atomic_write_json, atomic_write_parquet, content_hash
from abovqa.infer import PREDICTION_COLUMNS, predict
from abovqa.models import BlipVqaAdapter, get_adapter, get_spec

SAME = ["qa_id", "raw", "answer", "ok", "error"]  # what must not depend on how a run was scheduled


def _toy_work(work: Path) -> Path:
    "The pipeline's file format with PIL-drawn images, for when the sample/curate/qagen stages are not installed."
    root, rows = work / "images", []
    for i in range(24):
        colour, n = ["red", "blue", "green", "yellow"][i % 4], 1 + i % 3
        rel = f"{i:02x}/{i:08x}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (96, 96), "white")
        for k in range(n):
            ImageDraw.Draw(img).ellipse([4 + 30 * k, 30, 26 + 30 * k, 52], fill=colour)
        img.save(root / rel)
        for q, a, t in [("What color is this product?", colour, "color"), ("How many items are shown?", str(n), "count")]:
            rows.append(dict(qa_id=content_hash(rel, q), image_id=f"{i:08x}", image_path=rel, item_id=f"I{i}", split="test" if i % 2 else "train",
                             question=q, answer=a, qtype=t, difficulty="easy", options=None, source="toy"))
    atomic_write_parquet(pd.DataFrame(rows), work / "qa" / "qa.parquet")
    atomic_write_json(work / "curated" / "stats.json", {"images_root": str(root.resolve())})
    return work


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    "A work dir with questions: the real sample -> curate -> qagen when available, else the toy format."
    work = tmp_path_factory.mktemp("infer") / "work"
    try:
        from abovqa.curate import curate
        from abovqa.qagen import generate
        from abovqa.sample import sample_root
    except ImportError:
        return _toy_work(work)
    curate(sample_root(), work)
    generate(work)
    return work


@pytest.fixture
def work(template, tmp_path) -> Path:
    "A private copy (the images root stays shared and read-only unless a test copies it too)."
    return Path(shutil.copytree(template, tmp_path / "work"))


def _with_private_images(work: Path) -> Path:
    "Copy the images into WORK so a test may damage one; returns the new images root."
    stats_path = work / "curated" / "stats.json"
    stats = json.loads(stats_path.read_text())
    root = work / "private_images"
    shutil.copytree(stats["images_root"], root)
    stats["images_root"] = str(root)
    stats_path.write_text(json.dumps(stats))
    if (work / "curated" / "listings.parquet").exists():  # load_curated may read the root from elsewhere
        from abovqa.core import Study
        assert Study(work).images_root() == root, "images_root must follow curated/stats.json"
    return root


def test_predict_writes_the_predictions_file(work):
    preds = predict(work, "blip-vqa-base", batch_size=8, progress=False)
    path = work / "predictions" / "blip-vqa-base-tiny.parquet"
    on_disk = pd.read_parquet(path)
    qa = pd.read_parquet(work / "qa" / "qa.parquet")
    assert list(on_disk.columns) == PREDICTION_COLUMNS
    assert set(on_disk.qa_id) == set(qa[qa.split == "test"].qa_id) and on_disk.qa_id.is_unique
    assert on_disk.ok.all() and on_disk.answer.map(lambda a: isinstance(a, str)).all()
    assert (on_disk.run == "blip-vqa-base-tiny").all() and (on_disk.model == "blip-vqa-base").all()
    assert on_disk.prompt_version.nunique() == 1 and on_disk.device.eq("cpu").all() and on_disk.dtype.eq("float32").all()
    stats = json.loads((work / "predictions" / "blip-vqa-base-tiny.run.json").read_text())
    assert stats["n_computed"] == len(on_disk) and stats["n_cached"] == 0 and stats["complete"]
    pd.testing.assert_frame_equal(preds, on_disk)


def test_rerun_is_served_from_the_cache_without_touching_the_model(work):
    first = predict(work, "blip-vqa-base", batch_size=8, progress=False)
    adapter = get_adapter("blip-vqa-base")
    again = predict(work, adapter, batch_size=8, progress=False)
    assert adapter.calls == 0 and adapter.model is None, "the model was not even loaded"
    assert again.attrs["stats"]["n_cached"] == len(first) and again.attrs["stats"]["n_computed"] == 0
    pd.testing.assert_frame_equal(again, first)
    # a bigger fraction of another split computes only the new questions
    grown = predict(work, adapter, split="all", batch_size=8, progress=False, run="blip-vqa-base-tiny")
    assert grown.attrs["stats"]["n_cached"] == len(first)
    assert grown.attrs["stats"]["n_computed"] == len(grown) - len(first) > 0


def test_fraction_subsets_nest(work):
    quarter = predict(work, "blip-vqa-base", frac=0.25, run="q", progress=False)
    half = predict(work, "blip-vqa-base", frac=0.5, run="h", progress=False)
    assert 0 < len(quarter) < len(half) and set(quarter.qa_id) <= set(half.qa_id)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from abovqa.infer import predict
    from abovqa.models import BlipVqaAdapter, get_spec

    class SlowBlip(BlipVqaAdapter):  # slow enough to be killed mid-run; same weights, same cache keys
        def predict(self, items):
            time.sleep(0.15)
            return super().predict(items)

    predict(sys.argv[1], SlowBlip(get_spec("blip-vqa-base")), batch_size=2, run="killed", progress=False)
""")


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_result(work, tmp_path):
    reference = predict(shutil.copytree(work, tmp_path / "reference"), "blip-vqa-base", batch_size=2, run="killed", progress=False)
    script = tmp_path / "slow_predict.py"
    script.write_text(KILL_SCRIPT)
    cache = work / "predictions" / ".cache" / "killed"
    n_done = kill_mid_run(script, work, cache, at_least=6)
    assert not (work / "predictions" / "killed.parquet").exists(), "killed before writing the file"
    assert 6 <= n_done < len(reference)

    resumed = predict(work, "blip-vqa-base", batch_size=2, run="killed", progress=False)
    stats = resumed.attrs["stats"]
    assert stats["n_cached"] >= 6 and stats["n_computed"] == len(reference) - stats["n_cached"]
    pd.testing.assert_frame_equal(resumed[SAME], reference[SAME])


class SmallMemoryBlip(BlipVqaAdapter):
    "A BLIP whose 'GPU' fits two items: bigger batches raise the real torch out-of-memory error."

    def predict(self, items):
        if len(items) > 2:
            import torch
            self.refused = getattr(self, "refused", 0) + 1
            raise torch.OutOfMemoryError(f"CUDA out of memory: tried a batch of {len(items)} (simulated)")
        return super().predict(items)


def test_out_of_memory_halves_the_batch_until_it_fits(work):
    plain = predict(work, "blip-vqa-base", batch_size=8, run="plain", progress=False)
    small = SmallMemoryBlip(get_spec("blip-vqa-base"))
    oom = predict(work, small, batch_size=8, run="oom", progress=False)
    assert small.refused == 2, "8 refused, 4 refused, then 2 kept for the rest of the run"
    assert oom.ok.all() and oom.batch_size.max() == 2 and oom.attrs["stats"]["final_batch_size"] == 2
    pd.testing.assert_frame_equal(oom[SAME], plain[SAME])


class FailsOnPurple(BlipVqaAdapter):
    "Raises for one particular question: only that item may fail."

    def predict(self, items):
        if any("purple" in it["question"] for it in items):
            raise ValueError("this item always fails")
        return super().predict(items)


def test_bad_images_and_failing_items_are_recorded_and_the_run_goes_on(work):
    root = _with_private_images(work)
    qa = pd.read_parquet(work / "qa" / "qa.parquet")
    test = qa[qa.split == "test"]
    corrupt, missing = test.image_path.unique()[:2]
    (root / corrupt).write_bytes(b"\xff\xd8\xff garbage, not a jpeg")
    (root / missing).unlink()
    qa.loc[qa.index == test.index[-1], "question"] = "Is it purple?"
    atomic_write_parquet(qa, work / "qa" / "qa.parquet")
    preds = predict(work, FailsOnPurple(get_spec("blip-vqa-base")), batch_size=4, progress=False)
    failed = preds[~preds.ok].set_index("qa_id")
    bad_image = set(test[test.image_path.isin([corrupt, missing])].qa_id)
    assert set(failed.index) == bad_image | {test.qa_id.iloc[-1]}
    assert failed.loc[list(bad_image)].error.str.contains("unreadable image").all()
    assert failed.loc[test.qa_id.iloc[-1]].error == "ValueError: this item always fails"
    assert failed.answer.isna().all() and preds.ok.sum() == len(test) - len(failed) > 0
    # failures that are properties of the data are not retried on the next run
    assert predict(work, "blip-vqa-base", batch_size=4, progress=False).attrs["stats"]["n_computed"] == 0


def test_two_cpu_workers_give_one_workers_result(work, tmp_path):
    one = predict(shutil.copytree(work, tmp_path / "one"), "blip-vqa-base", split="all", frac=0.15, batch_size=4, workers=1, progress=False)
    two = predict(work, "blip-vqa-base", split="all", frac=0.15, batch_size=4, workers=2, progress=False)
    assert two.attrs["stats"]["workers"] == 2
    ranks = sorted(p.name.split("-")[0] for p in (work / "predictions" / ".cache" / "blip-vqa-base-tiny-all-15pct").glob("*.jsonl"))
    assert ranks == ["rank0", "rank1"], "one shard per rank, merged at the end"
    pd.testing.assert_frame_equal(two[SAME], one[SAME])


def test_baselines_notebook_runs_under_papermill(work, tmp_path):
    out = tmp_path / "30_baselines.ipynb"
    run = subprocess.run([str(BIN / "papermill"), str(REPO / "nbs" / "pipeline" / "30_baselines.ipynb"), str(out), "-k", "python3", "--language", "python",
                          "-p", "work", str(work), "-p", "frac", "0.5", "--cwd", str(REPO)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    preds = pd.read_parquet(work / "predictions" / "blip-vqa-base-tiny-50pct.parquet")  # a fraction gets its own file
    assert len(preds) > 0 and preds.ok.all()
    assert "exact_match" in out.read_text()


@pytest.mark.parametrize("name", ["vilt-b32-vqa", "clip-vit-b32", "blip2-opt-2.7b", "llava-1.5-7b", "qwen2.5-vl-7b"])
def test_every_registered_tiny_model_predicts_through_the_same_path(work, name):
    preds = predict(work, name, frac=0.25, batch_size=4, progress=False)
    assert len(preds) > 0 and preds.ok.all() and (preds.run == f"{name}-tiny-25pct").all()
    assert preds.answer.map(lambda a: isinstance(a, str) and a == a.strip().lower()).all()


def test_clip_all_regime_ranks_every_reference_answer(work):
    qa = pd.read_parquet(work / "qa" / "qa.parquet")
    preds = predict(work, "clip-vit-b32", regime="all", run="clip-all", frac=0.25, progress=False)
    assert set(preds.raw) <= set(qa.answer.astype(str)) and preds.prompt_version.str.startswith("clip-all-").all()
    fixed = predict(work, "clip-vit-b32", run="clip-all", frac=0.25, progress=False)
    assert fixed.attrs["stats"]["n_cached"] == 0, "another candidate set is another prompt version: nothing reused"


def test_predict_with_and_without_options_writes_two_runs(work, capsys):
    "The CLI's default run name keeps the options (and the fraction): a plain run cannot overwrite the options run."
    from abovqa.cli import main
    base = ["predict", "--work", str(work), "--model", "blip-vqa-base", "--size", "tiny", "--frac", "0.5"]
    assert main(base + ["--options"]) == 0
    options_run = work / "predictions" / "blip-vqa-base-tiny-50pct-options.parquet"
    with_options = options_run.read_bytes()
    assert main(base) == 0
    assert capsys.readouterr().out.strip().endswith(str(work / "predictions" / "blip-vqa-base-tiny-50pct.parquet")), "the CLI names the run's file"
    plain = pd.read_parquet(work / "predictions" / "blip-vqa-base-tiny-50pct.parquet")
    assert options_run.read_bytes() == with_options, "the plain run left the options run alone"
    shown = pd.read_parquet(options_run)
    assert set(shown.qa_id) == set(plain.qa_id) and shown.prompt_version.str.contains(r"\+options").all()
    assert not plain.prompt_version.str.contains("options").any()


def test_postprocess_and_prompt_from_the_cli_are_their_own_runs(work):
    from abovqa.cli import main
    base = ["predict", "--work", str(work), "--model", "llava-1.5-7b", "--size", "tiny", "--frac", "0.25"]
    assert main(base) == 0 and main(base + ["--prompt", "seed000-llava", "--postprocess", "last_word"]) == 0
    default = pd.read_parquet(work / "predictions" / "llava-1.5-7b-tiny-25pct.parquet")
    seed000 = pd.read_parquet(work / "predictions" / "llava-1.5-7b-tiny-25pct-p-seed000-llava-pp-last_word.parquet")
    assert (default.prompt_version == "instruct@v1/strip_answer").all()
    assert (seed000.prompt_version == "seed000-llava@v1/last_word").all()
    from abovqa.models import last_word
    assert seed000.answer.tolist() == [last_word(r) for r in seed000.raw]
    with pytest.raises(SystemExit, match="not a CLIP model"):
        main(base + ["--regime", "all"])
    assert main(["predict", "--work", str(work), "--model", "clip-vit-b32", "--size", "tiny", "--frac", "0.25", "--regime", "all"]) == 0
    assert (pd.read_parquet(work / "predictions" / "clip-vit-b32-tiny-25pct-all.parquet").prompt_version.str.startswith("clip-all-")).all()
