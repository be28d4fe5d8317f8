"""abovqa.finetune end to end on CPU with the tiny BLIP: learning, kill/resume, session budget, resume from an input root."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import fresh_work

from abovqa.core import TimeBudget


def test_tiny_lora_learns(study, tmp_path):
    "After training, exact match on the held-out test split is clearly above the untrained model's."
    from abovqa.finetune import finetune
    from abovqa.infer import predict
    from abovqa.metrics import exact_match
    work = fresh_work(study, tmp_path)
    qa = pd.read_parquet(work / "qa" / "qa.parquet").set_index("qa_id")
    untrained = predict(work, "blip-vqa-base", "tiny", split="test", progress=False)
    baseline = sum(exact_match(a, qa.answer[q]) for q, a in zip(untrained.qa_id, untrained.answer)) / len(untrained)
    result = finetune(work, "blip-lora", max_steps=400, verbose=False, num_workers=0)
    print(f"test exact match: untrained {baseline:.3f}, fine-tuned {result['test_exact_match']:.3f} "
          f"({result['global_step']} steps, {result['train_seconds']:.1f} s, best val EM {result['best_metric']:.3f})")
    assert result["status"] == "complete" and result["global_step"] == 400
    assert result["test_exact_match"] >= baseline + 0.15
    adapter = Path(result["adapter_dir"])
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "log_history.csv").exists()
    preds = pd.read_parquet(result["predictions"])
    assert len(preds) == (qa.split == "test").sum() and preds.run.eq(result["run"]).all()
    assert all(Path(f).exists() for f in result["figures"])


KILL_SCRIPT = textwrap.dedent("""
    import json, sys
    from abovqa.finetune import finetune
    result = finetune(sys.argv[1], "blip-lora", max_steps=60, save_steps=20, run="kill", predict_test=False,
                      verbose=False, num_workers=0)
    print(json.dumps({k: result[k] for k in ("status", "global_step", "resumed_from", "resumed_from_step")}))
""")


def _final_eval(work: Path, run: str = "kill") -> dict:
    history = json.loads((work / "checkpoints" / run / "log_history.json").read_text())
    return [h for h in history if "eval_loss" in h][-1]


def test_sigkill_then_resume_matches_uninterrupted(study, tmp_path):
    "SIGKILL mid-training; the same call resumes from the last complete checkpoint and ends where an uninterrupted run does."
    from abovqa.finetune import verify_checkpoint
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT)
    killed, reference = fresh_work(study, tmp_path, "killed"), fresh_work(study, tmp_path, "reference")

    proc = subprocess.Popen([sys.executable, str(script), str(killed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = killed / "checkpoints" / "kill" / "checkpoint-20"
    deadline = time.time() + 240
    while not verify_checkpoint(first)[0]:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 4 minutes"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "adapters" / "kill").exists()

    resumed = subprocess.run([sys.executable, str(script), str(killed)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["status"] == "complete" and result["global_step"] == 60
    assert result["resumed_from_step"] in (20, 40)

    whole = subprocess.run([sys.executable, str(script), str(reference)], capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert json.loads(whole.stdout.strip().splitlines()[-1])["resumed_from"] is None

    a, b = _final_eval(killed), _final_eval(reference)
    print(f"step 60 after kill+resume: eval_loss {a['eval_loss']:.6f}, EM {a['eval_exact_match']:.4f}; "
          f"uninterrupted: eval_loss {b['eval_loss']:.6f}, EM {b['eval_exact_match']:.4f}")
    assert a["step"] == b["step"] == 60
    # tolerance: same data order, RNG and optimizer state; only float summation order may differ
    assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-3)
    assert a["eval_exact_match"] == pytest.approx(b["eval_exact_match"], abs=0.02)


def test_budget_stops_before_deadline_then_next_session_finishes(study, tmp_path):
    "A tiny session budget saves and stops in time; the same call in a fresh session resumes there and finishes."
    import abovqa.finetune as ft
    work = fresh_work(study, tmp_path)
    budget = TimeBudget(hours=3 / 3600, margin_minutes=0)  # 3 seconds from now
    short = ft.finetune(work, "blip-lora", max_steps=3000, run="budget", budget=budget, predict_test=False, verbose=False,
                        num_workers=0)
    assert short["status"] == "stopped_for_budget", short
    assert time.time() < budget.deadline + 2  # saved and returned by the deadline (+ the bookkeeping after the save)
    step = short["global_step"]
    assert 0 < step < 3000 and ft.checkpoint_step(short["resume_from"]) == step
    assert not (work / "adapters" / "budget").exists()

    budget = TimeBudget(hours=3 / 3600, margin_minutes=0)  # the next session, as short: progress accumulates
    again = ft.finetune(work, "blip-lora", max_steps=3000, run="budget", budget=budget, predict_test=False, verbose=False,
                        num_workers=0)
    assert again["status"] == "stopped_for_budget" and again["global_step"] > step
    assert again["resumed_from_step"] == step


def test_settings_change_is_refused_and_resume_from_input_root(study, tmp_path, monkeypatch):
    "Resuming a run name with other settings is refused; a run's checkpoints attached as an input root are copied and resumed."
    import abovqa.finetune as ft
    work = fresh_work(study, tmp_path)
    budget = TimeBudget(hours=3 / 3600, margin_minutes=0)
    short = ft.finetune(work, "blip-lora", max_steps=400, run="r", budget=budget, predict_test=False, verbose=False,
                        num_workers=0)
    assert short["status"] == "stopped_for_budget"
    step = short["global_step"]
    with pytest.raises(ValueError, match="other settings"):
        ft.finetune(work, "blip-lora", max_steps=400, run="r", learning_rate=1e-4, predict_test=False, verbose=False)
    assert ft.find_checkpoints("r", work, roots=[]).ok.all()  # nothing touched by the refused call

    previous = tmp_path / "input" / "previous-version"
    previous.mkdir(parents=True)
    shutil.move(str(work / "checkpoints"), previous / "checkpoints")
    monkeypatch.setattr(ft, "input_roots", lambda: [previous])
    done = ft.finetune(work, "blip-lora", max_steps=400, run="r", budget=TimeBudget(hours=1), predict_test=False,
                       verbose=False, num_workers=0)
    assert done["status"] == "complete" and done["global_step"] == 400
    assert done["resumed_from_step"] == step
    assert Path(done["resumed_from"]).is_relative_to(work)  # copied into WORK, the input root left untouched
    assert (previous / "checkpoints" / "r" / f"checkpoint-{step}").exists()
    steps = [h["step"] for h in json.loads((work / "adapters" / "r" / "log_history.json").read_text()) if "loss" in h]
    assert min(steps) < step < max(steps) == 400  # one log across both sessions


def test_early_stopping_learning_rate_peak_memory_and_report_to(study, tmp_path):
    "With lr 0 the val metric cannot improve: patience 2 stops after the third evaluation; the log has the learning rate."
    import importlib.util
    from abovqa.finetune import finetune
    work = fresh_work(study, tmp_path)
    result = finetune(work, "blip-lora", max_steps=200, save_steps=5, learning_rate=0.0, early_stopping_patience=2, run="es",
                      predict_test=False, verbose=False, num_workers=0)
    assert result["status"] == "complete" and result["global_step"] == 15 and result["early_stopped"] is True
    assert result["peak_gpu_memory_gb"] is None and result["report_to"] == ["none"]  # a CPU run: no GPU memory to report
    logs = json.loads((Path(result["adapter_dir"]) / "log_history.json").read_text())
    assert [row["learning_rate"] for row in logs if "learning_rate" in row] and all(row.get("learning_rate", 0) == 0 for row in logs)
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        tb = finetune(work, "blip-lora", max_steps=4, save_steps=2, run="tb", report_to="tensorboard", predict_test=False,
                      verbose=False, num_workers=0)
        assert list((work / "checkpoints" / "tb" / "runs").rglob("events.out.tfevents.*")), "TensorBoard wrote its event file"
        assert tb["report_to"] == ["tensorboard"]
    else:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            finetune(work, "blip-lora", max_steps=4, save_steps=2, run="tb", report_to="tensorboard", predict_test=False,
                     verbose=False, num_workers=0)
