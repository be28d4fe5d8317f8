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


def test_show_config_prints_the_resolved_seed_settings(capsys):
    from abovqa.cli import main
    assert main(["finetune", "--work", "unused", "--recipe", "vlm-qlora", "--config", "seed003", "--show-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"] == "seed003" and shown["seed_model"] == "llava-gemma-2b"
    assert shown["lora"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (shown["lora"]["r"], shown["lora"]["lora_alpha"], shown["lora"]["lora_dropout"]) == (16, 32, 0.075)
    args = shown["training_arguments"]
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"], args["weight_decay"]) == (3, 6, 1e-6)
    assert args["optim"] == "adamw_torch_fused" and args["gradient_checkpointing"] is False and args["max_grad_norm"] == 0.3
    assert main(["finetune", "--work", "unused", "--recipe", "blip-lora", "--config", "seed001", "--show-config",
                 "--set", "learning_rate=2e-4", "target_modules=[query,value]"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["training_arguments"]["learning_rate"] == 2e-4 and shown["lora"]["target_modules"] == ["query", "value"]
    assert shown["training_arguments"]["eval_steps"] == 1000 and shown["training_arguments"]["metric_for_best_model"] == "loss"
    with pytest.raises(SystemExit, match="unknown finetune settings"):
        main(["finetune", "--work", "unused", "--recipe", "blip-lora", "--show-config", "--set", "lr=1"])


def test_set_on_resume_needs_allow_change_and_is_recorded(study, tmp_path, capsys):
    "Seed 001 lowered its learning rate by hand mid-run: refused silently changed, accepted with --allow-change, and really used."
    from abovqa.cli import main
    from abovqa.finetune import show_config
    work = fresh_work(study, tmp_path)
    base = ["finetune", "--work", str(work), "--recipe", "blip-lora", "--size", "tiny", "--run", "lr"]
    cadence = ["eval_steps=10", "logging_steps=2"]
    assert main(base + ["--max-steps", "20", "--set", *cadence]) == 0
    state = json.loads((work / "checkpoints" / "lr" / "checkpoint-20" / "trainer_state.json").read_text())
    shown = show_config("blip-lora", size="tiny", max_steps=20, eval_steps=10, logging_steps=2)["training_arguments"]
    assert (state["logging_steps"], state["eval_steps"], state["save_steps"], state["train_batch_size"]) == (
        shown["logging_steps"], shown["eval_steps"], shown["save_steps"], shown["per_device_train_batch_size"]), "--show-config is what trains"
    first_lr = show_config("blip-lora", size="tiny")["training_arguments"]["learning_rate"]

    lower = base + ["--max-steps", "40", "--set", *cadence, "learning_rate=1e-4"]
    with pytest.raises(SystemExit, match="allow-change"):
        main(lower)
    run_file = json.loads((work / "checkpoints" / "lr" / "abovqa_run.json").read_text())
    assert run_file["history"] == [] and run_file["settings"]["config"]["learning_rate"] == first_lr, "the refused call changed nothing"

    assert main(lower + ["--allow-change"]) == 0
    run_file = json.loads((work / "checkpoints" / "lr" / "abovqa_run.json").read_text())
    assert len(run_file["history"]) == 1
    assert run_file["history"][0]["changed"] == {"config.learning_rate": [first_lr, 1e-4], "max_steps": [20, 40]}
    log = json.loads((work / "checkpoints" / "lr" / "log_history.json").read_text())
    after = [h["learning_rate"] for h in log if h.get("step", 0) > 20 and "learning_rate" in h]
    assert after and max(after) <= 1e-4 * 1.0001, f"the resumed steps ran at the new rate, not the checkpoint's: {after}"
    with pytest.raises(SystemExit, match="cannot change on resume"):
        main(base + ["--max-steps", "40", "--set", *cadence, "learning_rate=1e-4", "r=8", "--allow-change"])


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
