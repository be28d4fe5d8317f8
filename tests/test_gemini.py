"""The gemini backend through the real google-genai SDK against a local generateContent server: pacing, retries,
Retry-After, key rotation, kill -9 and resume, and the API key never written anywhere."""
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import BIN, REPO
from abovqa.gen import QALog
from abovqa.qagen import generate, get_backend
from abovqa.testing import GeminiStandIn

FAST = dict(timeout=1.0, initial_delay=0.1, max_delay=1.0)  # client options that keep the faults quick


@pytest.fixture
def work(curated_work):
    return curated_work


@pytest.fixture
def keys(monkeypatch):
    "Two random keys in the environment, the way a user provides them."
    keys = [f"AIzaTEST{secrets.token_hex(12)}" for _ in range(2)]
    monkeypatch.setenv("GEMINI_API_KEY", ",".join(keys))
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    return keys


def assert_no_key_in(paths, keys, *texts):
    "No key in any file under `paths` nor in `texts` (stdout, stderr, reprs)."
    for text in texts:
        assert not any(k in str(text) for k in keys)
    n = 0
    for path in paths:
        for file in [path] if Path(path).is_file() else Path(path).rglob("*"):
            if file.is_file():
                data = file.read_bytes()
                assert not any(k.encode() in data for k in keys), file
                n += 1
    assert n > 0


def curated_colors(work) -> dict:
    listings = pd.read_parquet(work / "curated" / "listings.parquet")
    color = listings["color_standardized"].fillna(listings["color"]) if "color_standardized" in listings else listings["color"]
    return dict(zip(listings["image_id"], color.str.lower()))


def test_real_sdk_round_trip_with_the_seed_generation_config(work, keys, capsys):
    with GeminiStandIn(keys, latency=(0.01, 0.03)) as server:
        qa = generate(work, backend="gemini", base_url=server.url, max_images=24, workers=4, rpm=6000, **FAST)
    assert qa["image_id"].nunique() == 24 and set(qa["source"]) == {"gemini:gemini-2.5-flash/kit-v1"}
    colors = curated_colors(work)
    color_qa = qa[qa["qtype"] == "color"]
    assert len(color_qa) >= 20 and all(colors[i] == a for i, a in zip(color_qa["image_id"], color_qa["answer"]))
    assert set(qa.loc[qa["qtype"] == "yesno", "answer"]) == {"yes"}
    assert max(server.counts().values()) == 1 and len(server.log) == 24  # each image asked once
    config = server.log[0]["config"]
    assert config["temperature"] == 0 and config["topK"] == 1 and config["seed"] == 42 and config["maxOutputTokens"] == 512
    records = QALog(work / "qa" / "qa.log.jsonl").records()
    assert all(r["raw"].startswith("Here are the questions") for r in records)
    backend = get_backend("gemini", base_url=server.url)
    assert_no_key_in([work / "qa"], keys, repr(backend), capsys.readouterr())


def test_seed_prompts_are_versioned_sources(work, keys):
    with GeminiStandIn(keys) as server:
        first = generate(work, backend="gemini", prompt="seed000-v1", base_url=server.url, max_images=6, rpm=6000, verbose=False)
        second = generate(work, backend="gemini", prompt="seed001-p3", base_url=server.url, max_images=6, rpm=6000, verbose=False)
    assert set(first["source"]) == {"gemini:gemini-2.5-flash/seed000-v1"}
    assert set(second["source"]) == {"gemini:gemini-2.5-flash/seed001-p3"} and not set(first["qa_id"]) & set(second["qa_id"])
    assert server.log[0]["config"]["maxOutputTokens"] == 256 and len(server.log) == 12


def test_faults_are_retried_and_retry_after_is_honoured(work, keys):
    faults = {"429": 0.15, "500": 0.15, "timeout": 0.1, "malformed": 0.1}
    with GeminiStandIn(keys, latency=(0.01, 0.03), faults=faults, retry_after=1.0, hang=2.0) as server:
        generate(work, backend="gemini", base_url=server.url, max_images=30, workers=4, rpm=6000, verbose=False, **FAST)
        records = QALog(work / "qa" / "qa.log.jsonl").records()
        failed = [r for r in records if not r["ok"]]
        kinds = {e["fault"] for e in server.log}
        assert {"429", "500", "timeout", "malformed"} <= kinds
        # 429, 500 and timeouts are retried within the request; only the malformed replies are failures of the run
        n_malformed = sum(e["fault"] == "malformed" for e in server.log)
        assert len(failed) == n_malformed > 0 and all("no question/answer pairs" in r["error"] for r in failed)
        for i, e in enumerate(server.log):  # after a 429 with Retry-After: 1, that image is not asked again within a second
            if e["fault"] == "429":
                later = [x["t"] for x in server.log[i + 1:] if x["image"] == e["image"]]
                assert later and later[0] - e["t"] >= 0.95
        qa = generate(work, backend="gemini", base_url=server.url, max_images=30, workers=4, rpm=6000, verbose=False, **FAST)
    assert qa["image_id"].nunique() == 30
    assert max(server.counts().values()) == 1  # one good answer per image, over both runs
    assert_no_key_in([work / "qa"], keys)


def test_errors_that_echo_the_key_are_redacted(work, keys):
    with GeminiStandIn(keys, faults={"500": 1.0}) as server:
        qa = generate(work, backend="gemini", base_url=server.url, max_images=5, max_retries=0, rpm=6000, verbose=False, **FAST)
    records = QALog(work / "qa" / "qa.log.jsonl").records()
    assert qa.empty and len(records) == 5 and all("[REDACTED]" in r["error"] and "500" in r["error"] for r in records)
    assert_no_key_in([work / "qa"], keys)


def test_failed_images_are_given_up_after_max_failures(work, keys, capsys):
    with GeminiStandIn(keys, faults={"malformed": 1.0}, every_time=True) as server:
        for _ in range(3):
            generate(work, backend="gemini", base_url=server.url, max_images=4, max_failures=2, rpm=6000, **FAST)
    assert len(server.log) == 8 and "4 images skipped after 2 failed attempts" in capsys.readouterr().out


def test_keys_rotate_when_a_daily_quota_is_spent_then_stop_cleanly(work, keys, capsys):
    with GeminiStandIn(keys, rpd=5) as server:
        qa = generate(work, backend="gemini", base_url=server.url, max_images=14, workers=3, rpm=6000, **FAST)
    out = capsys.readouterr().out
    assert "every API key is retired" in out and "next run continues" in out
    records = QALog(work / "qa" / "qa.log.jsonl").records()
    assert len(records) == 10 and all(r["ok"] for r in records) and qa["image_id"].nunique() == 10
    served = [e["key"] for e in server.log if e["status"] == 200]
    assert served.count(1) == 5 and served.count(2) == 5
    with GeminiStandIn(keys, rpd=5) as tomorrow:  # the next day: only the 4 missing images are asked
        qa = generate(work, backend="gemini", base_url=tomorrow.url, max_images=14, workers=3, rpm=6000, verbose=False, **FAST)
    assert qa["image_id"].nunique() == 14 and len(tomorrow.log) == 4


def test_keys_come_from_the_environment_only(work, keys, monkeypatch):
    with pytest.raises(TypeError):
        get_backend("gemini", api_key=keys[0])
    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(RuntimeError, match="no Gemini API key"):
        get_backend("gemini")
    monkeypatch.setenv("GOOGLE_API_KEY", keys[1])
    assert "keys=1" in repr(get_backend("gemini"))


RUN = """
import sys
from abovqa.qagen import generate
generate(sys.argv[1], backend="gemini", base_url=sys.argv[2], workers=4, rpm=6000, timeout=1.0, initial_delay=0.1, max_delay=1.0)
"""
FAULTS = {"429": 0.1, "500": 0.1, "malformed": 0.1}


def test_kill_9_mid_run_then_restart_gives_the_uninterrupted_result(work, keys, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(work / "curated", reference / "curated")
    with GeminiStandIn(keys, latency=(0.01, 0.02), faults=FAULTS, retry_after=0.2) as server:
        for _ in range(2):  # the second run retries the malformed replies
            generate(reference, backend="gemini", base_url=server.url, workers=4, rpm=6000, verbose=False, **FAST)
    n_images = len(QALog(reference / "qa" / "qa.log.jsonl").done_keys())

    log = work / "qa" / "qa.log.jsonl"
    outputs = []
    with GeminiStandIn(keys, latency=(0.05, 0.1), faults=FAULTS, retry_after=0.2) as server:
        proc = subprocess.Popen([sys.executable, "-c", RUN, str(work), server.url], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 60
            while time.time() < deadline and (not log.exists() or log.read_bytes().count(b"\n") < 20):
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            outputs.append(proc.communicate(timeout=30)[0])
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        done_before = QALog(log).done_keys()
        assert 15 <= len(done_before) < n_images and not (work / "qa" / "qa.parquet").exists()
        for _ in range(2):
            run = subprocess.run([sys.executable, "-c", RUN, str(work), server.url], cwd=tmp_path, capture_output=True,
                                 text=True, timeout=120)
            assert run.returncode == 0, run.stderr
            outputs += [run.stdout, run.stderr]
        good = server.counts()
    assert (work / "qa" / "qa.parquet").read_bytes() == (reference / "qa" / "qa.parquet").read_bytes()
    assert (work / "qa" / "rejected.parquet").read_bytes() == (reference / "qa" / "rejected.parquet").read_bytes()
    store = QALog(log)
    ok_keys = [r["key"] for r in store.records() if r["ok"]]
    assert len(ok_keys) == len(set(ok_keys)) == n_images                 # every image done once in the store
    asked_twice = sum(n > 1 for n in good.values())
    assert asked_twice <= 4 and sum(good.values()) <= n_images + 4    # only the requests in flight at the kill are asked again
    qa = pd.read_parquet(work / "qa" / "qa.parquet")
    assert not qa.duplicated(["image_id", "question"]).any()
    assert any(not r["ok"] for r in store.records())                   # failures were recorded, then retried
    assert_no_key_in([work], keys, *outputs)


def test_pipeline_notebook_with_the_gemini_backend(keys, study, tmp_path):
    out = tmp_path / "20.ipynb"
    shutil.copytree(study / "curated", tmp_path / "work" / "curated")
    with GeminiStandIn(keys, latency=(0.01, 0.02)) as server:
        run = subprocess.run([str(BIN / "papermill"), "-k", "python3", str(REPO / "nbs/pipeline/20_generate_qa.ipynb"), str(out),
                              "-p", "work", str(tmp_path / "work"), "-p", "backend", "gemini", "-p", "base_url", server.url,
                              "-p", "max_images", "12", "-p", "workers", "4", "-p", "rpm", "6000", "--log-level", "ERROR"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert run.returncode == 0, run.stderr[-3000:]
    qa = pd.read_parquet(tmp_path / "work" / "qa" / "qa.parquet")
    assert qa["image_id"].nunique() == 12 and qa["source"].str.startswith("gemini:").all()
    assert "questions on 12 images" in out.read_text() and len(server.log) == 12
    assert_no_key_in([out, tmp_path / "work" / "qa"], keys, run.stdout, run.stderr)


def _field(prompt: str, label: str) -> str | None:
    import re
    m = re.search(rf"(?im)^\W*{label}:\s*(.+?)\s*$", prompt)
    return m.group(1).strip() if m else None


def seed000_reply(prompt: str) -> str:
    "What Gemini sent seed 000: nested one-element lists, no type, a count among the answers."
    import json
    color = (_field(prompt, "Color") or "red").split()[-1]
    pairs = [("What is the main color of this product?", color), ("How many legs are visible?", "4"),
             ("Is there a person in the picture?", "No")]
    return json.dumps([[{"question": [q], "answer": [a]}] for q, a in pairs])


def seed003_reply(prompt: str) -> str:
    "What seed 003's generator wrote: typed questions, 4 options each, a comparison among them."
    import json
    color = (_field(prompt, "Color") or "red").split()[-1].lower()
    others = [c for c in ("teal", "maroon", "ivory", "olive") if c != color][:3]
    pairs = [{"question": "What is the main color of this product?", "answer": color, "type": "color", "options": [others[0], color, *others[1:]]},
             {"question": "Which is taller, the back or the legs?", "answer": "back", "type": "comparison",
              "options": ["legs", "back", "seat", "arms"]},
             {"question": "Is it shown on a plain background?", "answer": "yes", "type": "yesno", "options": ["yes", "no", "maybe", "unclear"]}]
    return "```json\n" + json.dumps(pairs) + "\n```"


def test_untyped_seed000_reply_is_typed_from_its_text_and_keeps_counts(work, keys):
    with GeminiStandIn(keys, reply=seed000_reply) as server:
        qa = generate(work, backend="gemini", prompt="seed000-v1", base_url=server.url, max_images=8, rpm=6000, verbose=False)
    assert len(server.log) == 8
    assert set(qa.qtype) == {"color", "count", "yesno"}, qa.qtype.value_counts()
    counts = qa[qa.qtype == "count"]
    assert len(counts) == 8 and (counts.answer == "4").all() and (counts.difficulty == "medium").all()
    rejected = pd.read_parquet(work / "qa" / "rejected.parquet")
    assert "answer not alphabetic" not in set(rejected.reason), rejected.reason.value_counts()


def test_seed003_reply_keeps_its_options_and_comparison_questions(work, keys):
    with GeminiStandIn(keys, reply=seed003_reply) as server:
        qa = generate(work, backend="gemini", prompt="seed003-v1", base_url=server.url, max_images=6, rpm=6000, verbose=False)
    assert server.log[0]["config"]["maxOutputTokens"] == 500, "seed 003's generation length"
    comparison = qa[qa.qtype == "comparison"]
    assert len(comparison) == 6 and (comparison.answer == "back").all() and (comparison.difficulty == "hard").all()
    assert all(list(o) == ["legs", "back", "seat", "arms"] for o in comparison.options), "the generator's options, in its order"
    colors = qa[qa.qtype == "color"]
    assert len(colors) and all(set(o) - {a} <= {"teal", "maroon", "ivory", "olive"} for o, a in zip(colors.options, colors.answer)), \
        "the reply's distractors, not the kit's"
    assert all(list(o) == ["yes", "no", "maybe", "unclear"] for o in qa[qa.qtype == "yesno"].options)
    rejected = pd.read_parquet(work / "qa" / "rejected.parquet")
    assert "answer given away in the question" not in set(rejected.reason)
