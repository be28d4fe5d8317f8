"""abovqa.qagen: determinism, truthful answers, options, the resumable store (kill -9, torn lines) and the pipeline notebook."""
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import BIN, REPO
from abovqa.gen import QALog
from abovqa.qagen import TemplateBackend, generate, get_backend
from abovqa.text import vqa_normalize


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    "The embedded sample, curated once for the module."
    from abovqa.curate import curate
    from abovqa.sample import sample_root
    work = tmp_path_factory.mktemp("curated") / "work"
    curate(sample_root(), work, image_check=False)
    return work


@pytest.fixture
def work(curated, tmp_path):
    "A fresh study holding only the curated listings."
    fresh = tmp_path / "work"
    shutil.copytree(curated / "curated", fresh / "curated")
    return fresh


def test_same_seed_same_file_other_seed_other_wording(work, tmp_path):
    generate(work, verbose=False)
    other = tmp_path / "other"
    shutil.copytree(work / "curated", other / "curated")
    generate(other, verbose=False)
    assert (work / "qa" / "qa.parquet").read_bytes() == (other / "qa" / "qa.parquet").read_bytes()
    assert (work / "qa" / "rejected.parquet").read_bytes() == (other / "qa" / "rejected.parquet").read_bytes()
    reseeded = generate(other, seed=7, verbose=False)
    first = pd.read_parquet(work / "qa" / "qa.parquet")
    assert set(reseeded["qa_id"]) != set(first["qa_id"]) and set(reseeded["image_id"]) == set(first["image_id"])


def test_answers_are_what_the_sample_images_show(work):
    "Colour, shape and count answers agree with what abovqa.sample drew."
    from abovqa.curate import load_curated
    from abovqa.testing import read_sample_truth
    qa = generate(work, verbose=False)
    _, images_root = load_curated(work)
    truth = read_sample_truth(images_root.parent.parent).set_index("image_id")
    checked = 0
    for image_id, qtype, answer in zip(qa["image_id"], qa["qtype"], qa["answer"]):
        if image_id not in truth.index or truth.loc[image_id, "kind"] != "product":
            continue
        row = truth.loc[image_id]
        if qtype == "color":
            assert {"grey": "gray"}.get(row["color"], row["color"]) == {"grey": "gray"}.get(answer, answer), image_id
        elif qtype == "count":
            assert int(answer) == row["n_parts"], image_id
        elif qtype == "shape":
            assert answer == row["shape"].lower(), image_id
        else:
            continue
        checked += 1
    assert checked > 100


def test_validation_and_options_invariants(work):
    qa = generate(work, verbose=False)
    rejected = pd.read_parquet(work / "qa" / "rejected.parquet")
    assert qa["qa_id"].is_unique and qa["qa_id"].is_monotonic_increasing
    assert set(qa.columns) == {"qa_id", "image_id", "image_path", "item_id", "split", "question", "answer", "qtype", "difficulty",
                               "options", "source", "verified"}
    assert (qa["source"] == "template/v1").all()
    for question, answer, qtype in zip(qa["question"], qa["answer"], qa["qtype"]):
        assert answer == answer.lower() and len(answer.split()) == 1
        assert answer.isdigit() if qtype == "count" else answer.isalpha()
        if qtype != "yesno":
            assert answer not in question.lower().replace("?", "").split()
    assert not qa.duplicated(["image_id", "question"]).any()
    yes_no = qa.loc[qa["qtype"] == "yesno", "answer"].value_counts()
    assert yes_no["yes"] == yes_no["no"] > 0
    assert qa.loc[qa["qtype"] == "yesno", "options"].isna().all()
    with_options = qa[qa["options"].notna()]
    assert len(with_options) > 0.6 * (qa["qtype"] != "yesno").sum()
    for answer, qtype, options in zip(with_options["answer"], with_options["qtype"], with_options["options"]):
        options = list(options)
        assert len(options) == 4 and len(set(options)) == 4 and answer in options
        assert [vqa_normalize(o) for o in options].count(vqa_normalize(answer)) == 1
        pool = set(qa.loc[qa["qtype"] == qtype, "answer"])
        assert all(o in pool or o.isalnum() for o in options)
    assert len(rejected) and rejected["reason"].notna().all() and (rejected["reason"] != "").all()
    assert rejected.query("reason == 'answer not one word'")["answer"].str.contains(" ").all()


SLOW_RUN = """
import sys, time
from abovqa.qagen import TemplateBackend, generate

class Slow(TemplateBackend):  # the template backend at an LLM's pace, so the run can be killed midway
    def __call__(self, request):
        time.sleep(0.03)
        return super().__call__(request)

generate(sys.argv[1], backend=Slow(), batch_size=4, verbose=False)
"""


def test_kill_9_mid_run_then_restart_gives_the_uninterrupted_result(work, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(work / "curated", reference / "curated")
    generate(reference, verbose=False)

    log = work / "qa" / "qa.log.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(work)], cwd=tmp_path)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and (not log.exists() or log.read_bytes().count(b"\n") < 12):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (work / "qa" / "qa.parquet").exists()
    done_before = len(QALog(log).done_keys())
    assert 12 <= done_before < 171
    with open(log, "a") as f:  # and a torn last line, as a kill inside a write leaves
        f.write('{"key": "deadbeef", "ok": true, "pairs": [{"quest')

    restarted = subprocess.run([sys.executable, "-c", SLOW_RUN.replace("time.sleep(0.03)", "pass"), str(work)],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    assert (work / "qa" / "qa.parquet").read_bytes() == (reference / "qa" / "qa.parquet").read_bytes()
    assert (work / "qa" / "rejected.parquet").read_bytes() == (reference / "qa" / "rejected.parquet").read_bytes()
    store = QALog(log)
    keys = [r["key"] for r in store.records()]
    assert store.n_malformed == 1 and len(keys) == len(set(keys)) == 171


def test_malformed_lines_anywhere_are_skipped(work):
    first = generate(work, max_images=10, verbose=False)
    log = work / "qa" / "qa.log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[0] + "not json at all\n" + "[1, 2]\n" + "".join(lines[1:]) + '{"key": "x", "ok"')
    again = generate(work, max_images=10, verbose=False)
    assert again.equals(first)
    store = QALog(log)
    assert len(store.records()) == 10 and store.n_malformed == 3


def test_failed_requests_are_recorded_and_retried(work):
    class Broken(TemplateBackend):
        def __call__(self, request):
            raise ConnectionError("quota exceeded")

    assert generate(work, backend=Broken(), max_images=5, verbose=False).empty
    records = QALog(work / "qa" / "qa.log.jsonl").records()
    assert len(records) == 5 and all(not r["ok"] and "quota exceeded" in r["error"] for r in records)
    assert generate(work, max_images=5, verbose=False)["image_id"].nunique() == 5


def test_clear_errors(tmp_path, work):
    with pytest.raises(FileNotFoundError, match="curate first"):
        generate(tmp_path / "empty")
    with pytest.raises(ValueError, match="no model and no prompt"):
        generate(work, prompt="Ask about the colour")
    with pytest.raises(ValueError, match="cannot write them"):
        get_backend("hf", model="blip-vqa-base", size="tiny")
    with pytest.raises(ValueError, match="unknown question backend"):
        get_backend("nope")


def test_llm_style_text_backend_goes_through_the_same_validator(work):
    class TextBackend:
        name, model, prompt_version = "echo", "fake-llm", "p1"

        def __call__(self, request):
            return ('```json\n[{"question": "What color is this product?", "answer": "Dark Red", "type": "color"},'
                    ' {"question": "What is this?", "answer": "A chair.", "type": "type"}]\n```')

    qa = generate(work, backend=TextBackend(), max_images=3, verbose=False, keep_contradicting=True)  # "chair" for any product
    rejected = pd.read_parquet(work / "qa" / "rejected.parquet")
    assert list(qa["answer"]) == ["chair"] * 3 and (qa["qtype"] == "type").all()   # "A chair." cleaned to one word
    types = pd.read_parquet(work / "curated" / "listings.parquet").drop_duplicates("image_id").set_index("image_id")["product_type"]
    assert list(qa["verified"]) == ["agrees" if types[i] == "CHAIR" else "contradicts" for i in qa["image_id"]]
    assert list(rejected["reason"]) == ["answer not one word"] * 3 and set(rejected["raw_answer"]) == {"Dark Red"}
    assert (qa["source"] == "echo:fake-llm/p1").all()
    assert all(r["raw"].startswith("```json") for r in QALog(work / "qa" / "qa.log.jsonl").records())


def test_pipeline_notebook_needs_curated_listings_and_never_fakes_them(study, tmp_path):
    "Without WORK/curated the step stops and names 10_curate (no silent sample); given it, the step runs."
    out, work = tmp_path / "20.ipynb", tmp_path / "work"
    args = [str(BIN / "papermill"), "-k", "python3", str(REPO / "nbs/pipeline/20_generate_qa.ipynb"), str(out),
            "-p", "work", str(work), "-p", "max_images", "30", "--log-level", "ERROR"]
    failed = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0 and "MissingStageError" in failed.stderr and "10_curate" in failed.stderr
    assert not (work / "qa").exists() and not (work / "curated").exists(), "nothing was made up"
    shutil.copytree(study / "curated", work / "curated")
    subprocess.run(args, check=True, cwd=tmp_path, capture_output=True, timeout=300)
    qa = pd.read_parquet(work / "qa" / "qa.parquet")
    assert qa["image_id"].nunique() == 30
    assert "questions on 30 images" in out.read_text()


def test_hf_backend_runs_a_local_vlm_from_the_same_prompts(work):
    "A tiny random LLaVA through abovqa.models: prompt in, raw text recorded; unparseable babble is a failure, retried."
    backend = get_backend("hf", model="llava-1.5-7b", size="tiny", prompt="seed001-p3", max_new_tokens=12)
    assert backend.adapter.prompt({"question": "Q?", "options": None}) == "Q?"      # the prompt goes in unwrapped
    assert generate(work, backend=backend, max_images=3, verbose=False).empty
    records = QALog(work / "qa" / "qa.log.jsonl").records()
    assert len(records) == 3 and all(not r["ok"] and r["raw"] and "no question/answer pairs" in r["error"] for r in records)
    assert {(r["backend"], r["model"], r["prompt_version"]) for r in records} == {("hf", "llava-1.5-7b-tiny", "seed001-p3")}
    assert backend.adapter.calls == 3
