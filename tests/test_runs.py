"""The batch runner end to end: real papermill subprocesses, real kernels, real kills."""
import json
import os
import re
import time
from pathlib import Path

import psutil
import pytest

from abovqa.models import models_for

from abovqa.runs import PlanError, demo_plan, parse_plan, pipeline_dir, render_html, run_plan
from abovqa.testing import make_notebook


def status_of(out: Path, name: str) -> dict:
    return json.loads((out / name / "status.json").read_text())


@pytest.fixture
def notebooks(tmp_path):
    "Small notebooks: one that works, one that raises, one that hangs (after telling us its kernel's pid), one whose kernel dies."
    nbs = tmp_path / "nbs"
    return {
        "ok": make_notebook(nbs / "ok.ipynb", "print('value', n * 2)", parameters="n = 1"),
        "fail": make_notebook(nbs / "fail.ipynb", "y = n + 1", "raise RuntimeError(f'broken on purpose {y}')", parameters="n = 1"),
        "hang": make_notebook(nbs / "hang.ipynb", "import os, pathlib, time\npathlib.Path(pid_file).write_text(str(os.getpid()))\ntime.sleep(600)",
                              parameters="pid_file = 'kernel.pid'"),
        "die": make_notebook(nbs / "die.ipynb", "import os\nos._exit(3)"),
        "env": make_notebook(nbs / "env.ipynb", "import json, os, pathlib\nrecord = pathlib.Path(record)\nrecord.parent.mkdir(parents=True, exist_ok=True)\nrecord.write_text(json.dumps("
                             "{'cwd': os.getcwd(), 'session': os.environ.get('ABOVQA_SESSION_START'), 'gpus': os.environ.get('CUDA_VISIBLE_DEVICES')}))",
                             parameters="record = 'env.json'"),
    }


def test_failures_and_timeouts_do_not_stop_the_batch_and_a_rerun_redoes_only_them(tmp_path, notebooks):
    out, pid_file = tmp_path / "out", tmp_path / "kernel.pid"
    plan = {"runs": [{"name": "first", "notebook": str(notebooks["ok"]), "parameters": {"n": 1}},
                     {"name": "fail", "notebook": str(notebooks["fail"]), "parameters": {"n": 41}},
                     {"name": "hang", "notebook": str(notebooks["hang"]), "parameters": {"pid_file": str(pid_file)}, "timeout": 10},
                     {"name": "last", "notebook": str(notebooks["ok"]), "parameters": {"n": 2}}]}
    first = run_plan(plan, out=out, parallel=1).set_index("name")
    assert first.status.to_dict() == {"first": "ok", "fail": "failed", "hang": "timeout", "last": "ok"}

    fail = status_of(out, "fail")["error"]
    assert (fail["exception"], fail["cell_index"]) == ("RuntimeError", 2) and "broken on purpose 42" in fail["message"]
    assert fail["source_head"].startswith("raise RuntimeError")
    hang = status_of(out, "hang")
    assert hang["error"]["exception"] == "Timeout" and "time.sleep(600)" in hang["error"]["source_head"]
    kernel_pid = int(pid_file.read_text())
    assert not psutil.pid_exists(kernel_pid) or psutil.Process(kernel_pid).status() == psutil.STATUS_ZOMBIE, "the hung kernel survived"
    for name in first.index:  # every run leaves its record, failed ones included
        assert {"status.json", "parameters.json", "run.log"} <= {p.name for p in (out / name).iterdir()}
    assert (out / "fail" / "fail.html").is_file()
    assert (out / "first" / "ok.ipynb").is_file() and (out / "first" / "ok.html").is_file()

    before = {name: status_of(out, name) for name in first.index}
    second = run_plan(plan, out=out, parallel=1).set_index("name")
    after = {name: status_of(out, name) for name in first.index}
    assert second.action.to_dict() == {"first": "skipped", "fail": "ran", "hang": "ran", "last": "skipped"}
    assert second.attempt.to_dict() == {"first": 1, "fail": 2, "hang": 2, "last": 1}
    for name in ("first", "last"):
        assert after[name] == before[name]
    for name in ("fail", "hang"):
        assert [h["attempt"] for h in after[name]["history"]] == [1, 2]
        assert after[name]["started"] >= before[name]["finished"]

    kept = run_plan(plan, out=out, parallel=1, retry_failed=False).set_index("name")
    assert set(kept.action) == {"skipped"} and kept.attempt.to_dict() == second.attempt.to_dict()


def test_a_dead_kernel_fails_its_run_and_the_batch_goes_on(tmp_path, notebooks):
    out = tmp_path / "out"
    table = run_plan({"runs": [{"name": "die", "notebook": str(notebooks["die"])},
                               {"name": "after", "notebook": str(notebooks["ok"])}]}, out=out).set_index("name")
    assert table.status.to_dict() == {"die": "failed", "after": "ok"}
    error = status_of(out, "die")["error"]
    assert error["exception"] == "DeadKernelError" and error["source_head"] == "import os\nos._exit(3)"


def test_dependencies_block_on_failure_and_changed_parameters_rerun(tmp_path, notebooks):
    out = tmp_path / "out"
    plan = {"runs": [{"name": "fail", "notebook": str(notebooks["fail"])},
                     {"name": "needs-fail", "notebook": str(notebooks["ok"]), "depends_on": "fail"},
                     {"name": "ok", "notebook": str(notebooks["ok"]), "parameters": {"n": 1}}]}
    table = run_plan(plan, out=out).set_index("name")
    assert table.status.to_dict() == {"fail": "failed", "needs-fail": "blocked", "ok": "ok"}
    assert not (out / "needs-fail" / "ok.ipynb").exists()

    plan["runs"][2]["parameters"] = {"n": 2}
    again = run_plan(plan, out=out, retry_failed=False).set_index("name")
    assert again.action.to_dict() == {"fail": "skipped", "needs-fail": "blocked", "ok": "ran"}
    assert again.loc["ok", "attempt"] == 2 and json.loads((out / "ok" / "parameters.json").read_text()) == {"n": 2}


def test_a_rerun_dependency_reruns_its_dependents(tmp_path, notebooks):
    out = tmp_path / "out"
    plan = {"runs": [{"name": "up", "notebook": str(notebooks["ok"]), "parameters": {"n": 1}},
                     {"name": "down", "notebook": str(notebooks["ok"]), "depends_on": ["up"]},
                     {"name": "other", "notebook": str(notebooks["ok"])}]}
    assert set(run_plan(plan, out=out).status) == {"ok"}
    plan["runs"][0]["parameters"]["n"] = 2
    again = run_plan(plan, out=out).set_index("name")
    assert again.action.to_dict() == {"up": "ran", "down": "ran", "other": "skipped"}
    assert again.attempt.to_dict() == {"up": 2, "down": 2, "other": 1}


def test_runs_share_the_session_clock_and_the_callers_directory(tmp_path, notebooks, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ABOVQA_SESSION_START", "1700000000.5")
    table = run_plan({"runs": [{"name": "env", "notebook": str(notebooks["env"]), "parameters": {"record": "rec/env.json"}}]},
                     out="out", gpus=[])
    assert table.status.tolist() == ["ok"]
    seen = json.loads((tmp_path / "rec" / "env.json").read_text())  # the relative parameter resolved from the caller's cwd
    assert seen["cwd"] == str(tmp_path.resolve()) and seen["session"] == "1700000000.5" and seen["gpus"] is None


def test_session_clock_is_set_when_unset(tmp_path, notebooks, monkeypatch):
    monkeypatch.setenv("ABOVQA_SESSION_START", "")  # unset, and restored after the test
    record = tmp_path / "env.json"
    run_plan({"runs": [{"name": "env", "notebook": str(notebooks["env"]), "parameters": {"record": str(record)}}]}, out=tmp_path / "out")
    session = json.loads(record.read_text())["session"]
    assert session == os.environ["ABOVQA_SESSION_START"] and float(session) <= time.time()


def test_matrix_from_yaml_spread_over_gpus(tmp_path, notebooks):
    plan_file = tmp_path / "nbs" / "plan.yaml"
    plan_file.write_text(
        "defaults: {parameters: {record: unset}}\n"
        "matrix:\n"
        "  notebook: env.ipynb\n"
        "  name: \"env-{tag}-{frac}\"\n"
        "  parameters: {tag: [a, b], frac: [0.25, 0.5], extra: 1}\n")
    specs = parse_plan(plan_file)  # the notebook is found next to the plan file
    assert [s.name for s in specs] == ["env-a-0.25", "env-a-0.5", "env-b-0.25", "env-b-0.5"]
    assert specs[1].parameters == {"record": "unset", "tag": "a", "frac": 0.5, "extra": 1}
    assert specs[0].notebook == notebooks["env"].resolve()

    records = tmp_path / "records"
    plan = {"runs": [{"name": f"gpu-{i}", "notebook": str(notebooks["env"]), "parameters": {"record": str(records / f"{i}.json")}}
                     for i in range(3)]
                    + [{"name": "both", "notebook": str(notebooks["env"]), "gpus": 2, "parameters": {"record": str(records / "both.json")}}]}
    records.mkdir()
    table = run_plan(plan, out=tmp_path / "out", parallel=2, gpus=["0", "1"]).set_index("name")
    assert set(table.status) == {"ok"}
    seen = {p.stem: json.loads(p.read_text())["gpus"] for p in records.glob("*.json")}
    assert all(seen[str(i)] in {"0", "1"} for i in range(3)), seen  # one GPU per run, never both
    assert sorted(seen["both"].split(",")) == ["0", "1"]  # a 2-GPU run waits for both
    assert table.loc["both", "gpus"] in {"0,1", "1,0"}


BAD_PLANS = [
    ({"runs": [{"name": "a", "notebook": "no/such.ipynb"}]}, "not found"),
    ({"runs": [{"name": "a", "notebook": "@OK@"}, {"name": "a", "notebook": "@OK@"}]}, "duplicate run name 'a'"),
    ({"runs": [{"notebook": "@OK@"}]}, "must be a non-empty directory name"),
    ({"runs": [{"name": "a/b", "notebook": "@OK@"}]}, "must be a non-empty directory name"),
    ({"runs": [{"name": "a"}]}, "missing 'notebook'"),
    ({"runs": [{"name": "a", "notebook": "@OK@", "timout": 3}]}, "unknown key 'timout'"),
    ({"runs": [{"name": "a", "notebook": "@OK@", "timeout": "soon"}]}, "must be a positive number"),
    ({"runs": [{"name": "a", "notebook": "@OK@", "gpus": 0}]}, "gpus: must be a positive integer"),
    ({"runs": [{"name": "a", "notebook": "@OK@", "depends_on": ["b"]}, {"name": "b", "notebook": "@OK@"}]}, "'b' is not an earlier run"),
    ({"runs": [{"name": "a", "notebook": "@OK@", "parameters": [1, 2]}]}, "parameters: must be a mapping"),
    ({"runs": [{"name": "a", "notebook": "@OK@", "parameters": {"x": float("nan")}}]}, "not JSON-serialisable"),
    ({"matrix": {"notebook": "@OK@", "parameters": {"n": [1]}}}, "missing 'name'"),
    ({"matrix": {"notebook": "@OK@", "name": "m-{n}", "parameters": {"n": []}}}, "empty list of values"),
    ({"matrix": {"notebook": "@OK@", "name": "m-{model}", "parameters": {"n": [1]}}}, "{model} is not a matrix parameter"),
    ({"matrix": {"notebook": "@OK@", "name": "m", "parameters": {"n": [1, 2]}}}, "duplicate run name 'm'"),
    ({"matrix": {"notebook": "@OK@", "name": "m-{n}", "parameters": []}}, "non-empty mapping"),
    ({"runs": []}, "no runs"),
    ({"runs": [], "jobs": []}, "unknown key 'jobs'"),
]


@pytest.mark.parametrize("plan, message", BAD_PLANS)
def test_invalid_plans_are_refused_with_a_clear_message(plan, message, notebooks, tmp_path):
    plan = json.loads(json.dumps(plan).replace("@OK@", str(notebooks["ok"])))
    with pytest.raises(PlanError, match=re.escape(message)):
        run_plan(plan, out=tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing may run from an invalid plan"


def test_plan_files_that_are_not_plans(tmp_path):
    with pytest.raises(FileNotFoundError, match="plan file"):
        parse_plan(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(PlanError, match="a plan is a mapping"):
        parse_plan(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("runs: [\n")
    with pytest.raises(PlanError, match="not valid YAML"):
        parse_plan(tmp_path / "broken.yaml")


@pytest.mark.parametrize("parameters", [{"api_key": "x"}, {"GEMINI_API_KEY": "x"}, {"hfToken": "x"}, {"password": "x"},
                                        {"options": {"client_secret": "x"}}, {"note": "AIza" + "b" * 35}, {"token": None}])
def test_secret_like_parameters_are_refused(parameters, notebooks, tmp_path):
    plan = {"runs": [{"name": "a", "notebook": str(notebooks["ok"]), "parameters": parameters}]}
    with pytest.raises(PlanError, match="secret|API key") as refused:
        run_plan(plan, out=tmp_path / "out")
    assert "AIza" not in str(refused.value), "the refusal must not echo the secret"
    assert not (tmp_path / "out").exists()


def test_harmless_names_that_contain_secret_words_pass(notebooks):
    specs = parse_plan({"runs": [{"name": "a", "notebook": str(notebooks["ok"]),
                                  "parameters": {"keywords": ["x"], "max_new_tokens": 8, "monkey": 1, "tokenizer": "bert"}}]})
    assert specs[0].parameters["max_new_tokens"] == 8


def test_demo_plan_chains_the_pipeline_stages(tmp_path, monkeypatch):
    assert (pipeline_dir() / "..").resolve().name == "nbs"
    stages = ["10_curate", "20_generate_qa", "30_baselines", "40_finetune_lora", "41_finetune_qlora", "50_evaluate", "70_captioning"]
    for stage in stages:
        make_notebook(tmp_path / "pipeline" / f"{stage}.ipynb", "pass", parameters="work = 'runs/nb'")
    monkeypatch.setenv("ABOVQA_NOTEBOOKS", str(tmp_path / "pipeline"))
    plan = demo_plan(tmp_path / "work")
    specs = parse_plan(plan)
    assert [s.name for s in specs] == stages
    assert all(s.parameters["work"] == str(tmp_path / "work") for s in specs)
    assert specs[0].parameters["preset"] == "balanced" and specs[1].parameters["backend"] == "template"
    assert specs[2].parameters["models"] == models_for("vqa") and specs[2].parameters["size"] == "tiny"
    assert specs[3].parameters["recipe"] == "blip-lora" and specs[3].parameters["size"] == "tiny"
    assert specs[4].parameters["recipe"] == "vlm-qlora" and specs[4].parameters["size"] == "tiny"
    assert "blip-caption-base" not in specs[2].parameters["models"] and specs[6].parameters["size"] == "tiny"
    assert [s.depends_on for s in specs] == [[], ["10_curate"], ["20_generate_qa"], ["20_generate_qa"], ["20_generate_qa"],
                                             ["30_baselines", "40_finetune_lora", "41_finetune_qlora"], ["10_curate"]]
    assert specs[0].parameters["abo_root"] == "sample", "the demo asks for the embedded sample explicitly"
    monkeypatch.setenv("ABOVQA_NOTEBOOKS", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="ABOVQA_NOTEBOOKS"):
        demo_plan(tmp_path / "work")


def test_a_failed_html_render_is_reported_not_raised(tmp_path):
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{not json")
    error = render_html(broken, tmp_path / "broken.html")
    assert error and not (tmp_path / "broken.html").exists()
