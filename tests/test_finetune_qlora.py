"""vlm-qlora (4-bit QLoRA + TRL SFT) and vilt-lora end to end on CPU with the tiny presets.

The QLoRA path exercised here is the real one: bitsandbytes 4-bit (nf4, double quant) on the CPU for
every Linear layer whose in_features is a multiple of 64 (the tiny models' MLP down projections and
vision merger); the other layers are left unquantized by `qlora_skip_modules`, as bitsandbytes
requires on a CPU.
"""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import fresh_work


def losses(result) -> list[float]:
    history = json.loads((Path(result["checkpoints"]) / "log_history.json").read_text())
    return [h["loss"] for h in history if "loss" in h]


@pytest.mark.parametrize("model", ["qwen2.5-vl-7b", "llava-1.5-7b"])
def test_qlora_is_really_4bit(model):
    from abovqa.core import detect_hardware
    from abovqa.finetune import load_qlora_model, qlora_skip_modules, resolve_config
    from abovqa.models import get_adapter
    adapter = get_adapter(model, "tiny")
    net, processor, backend = load_qlora_model(adapter, resolve_config("vlm-qlora", "demo"), detect_hardware())
    quantized = [n for n, m in net.named_modules() if type(m).__name__ == "Linear4bit"]
    skipped = qlora_skip_modules(adapter.model_class, adapter.source)
    assert backend == "transformers" and quantized, "no layer was quantized: the test would not exercise QLoRA"
    assert all(m.in_features % 64 == 0 for n, m in net.named_modules() if type(m).__name__ == "Linear4bit")
    assert any("lora_A" in n for n, p in net.named_parameters() if p.requires_grad)
    assert not any(q.endswith(s) for q in quantized for s in skipped)


def test_qlora_qwen_learns_saves_reloads_predicts(study, tmp_path):
    import torch
    from abovqa.finetune import finetune
    from abovqa.infer import predict
    from abovqa.models import get_adapter
    work = fresh_work(study, tmp_path)
    result = finetune(work, "vlm-qlora", model="qwen2.5-vl-7b", max_steps=40, verbose=False, num_workers=0)
    curve = losses(result)
    assert result["status"] == "complete" and result["global_step"] == 40
    assert curve[-1] < 0.8 * curve[0], curve  # the answer loss falls visibly
    adapter_dir = Path(result["adapter_dir"])
    assert (adapter_dir / "adapter_model.safetensors").stat().st_size > 0
    # reload: the adapter changes the model (merged into the base), and predicts through infer.predict
    base = get_adapter("qwen2.5-vl-7b", "tiny").load()
    tuned = get_adapter("qwen2.5-vl-7b", "tiny", adapter_dir=adapter_dir).load()
    assert not torch.equal(base.model.lm_head.weight, tuned.model.lm_head.weight)
    preds = predict(work, "qwen2.5-vl-7b", "tiny", split="test", adapter_dir=adapter_dir, run="reloaded", progress=False)
    qa = pd.read_parquet(work / "qa" / "qa.parquet")
    assert len(preds) == (qa.split == "test").sum() and preds.ok.all()
    assert preds.answer.str.len().gt(0).all()  # the tiny Qwen says a word after training, not an empty string
    assert (work / "predictions" / f"{result['run']}.parquet").exists()
    # the same call again recomputes nothing
    again = finetune(work, "vlm-qlora", model="qwen2.5-vl-7b", max_steps=40, verbose=False, num_workers=0)
    assert again["already_complete"] and again["test_exact_match"] == result["test_exact_match"]


def test_options_switch_changes_training_prompt(study, tmp_path):
    from abovqa.finetune import VqaDataset, load_split, sft_rows
    from abovqa.core import Study
    from abovqa.models import get_adapter
    rows = load_split(study, "train").head(6)
    assert rows.options.map(lambda o: o is not None and len(o) == 4).all()
    plain = sft_rows(VqaDataset(rows, Study(study).images_root(), "instruct"))
    shown = sft_rows(VqaDataset(rows, Study(study).images_root(), "instruct", use_options=True))
    for i, row in enumerate(rows.itertuples()):
        text_plain, text_shown = (d[i]["prompt"][0]["content"][1]["text"] for d in (plain, shown))
        assert text_plain != text_shown and all(str(o) in text_shown for o in row.options)
        # the training prompt is exactly the one the adapter asks at inference, with and without options
        for use_options, text in ((False, text_plain), (True, text_shown)):
            adapter = get_adapter("qwen2.5-vl-7b", "tiny", use_options=use_options)
            assert adapter.prompt({"question": row.question, "options": row.options}) == text


def test_options_run_predicts_with_options(study, tmp_path):
    from abovqa.finetune import finetune
    work = fresh_work(study, tmp_path)
    result = finetune(work, "vlm-qlora", "seed003-options", model="llava-1.5-7b", max_steps=6, verbose=False, num_workers=0,
                      batch_size=4, gradient_accumulation_steps=1, gradient_checkpointing=False, learning_rate=5e-3, eval_steps=6)
    assert result["status"] == "complete" and result["use_options"] and "options" in result["run"]
    preds = pd.read_parquet(result["predictions"])
    assert preds.ok.all() and preds.prompt_version.str.contains(r"\+options").all()


def test_vilt_lora_trains_and_predicts(study, tmp_path):
    from abovqa.finetune import finetune
    work = fresh_work(study, tmp_path)
    result = finetune(work, "vilt-lora", max_steps=60, verbose=False, num_workers=0)
    curve = losses(result)
    assert result["status"] == "complete" and curve[-1] < curve[0]
    assert isinstance(result["n_outside_vocab"], int) and result["n_train"] > 0
    assert (Path(result["adapter_dir"]) / "adapter_model.safetensors").exists()
    assert pd.read_parquet(result["predictions"]).ok.all()


def test_recipe_rejects_other_families(study, tmp_path):
    from abovqa.finetune import finetune
    with pytest.raises(ValueError, match="trains"):
        finetune(fresh_work(study, tmp_path), "vlm-qlora", model="blip-vqa-base", max_steps=1, verbose=False)


def test_cli_finetune_vlm_qlora(study, tmp_path):
    work = fresh_work(study, tmp_path)
    cli = Path(sys.executable).with_name("abovqa")
    out = subprocess.run([str(cli), "finetune", "--work", str(work), "--recipe", "vlm-qlora", "--model", "qwen2.5-vl-7b",
                          "--size", "tiny", "--max-steps", "5"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "status: complete" in out.stdout
    assert (work / "adapters" / "qwen2.5-vl-7b-tiny-qlora-demo" / "adapter_model.safetensors").exists()


def test_nan_guard_stops_sft_training(study, tmp_path):
    "The guard (same callback and step check as blip-lora) stops a TRL run at a NaN loss and keeps the last good checkpoint."
    import torch
    from transformers import TrainerCallback
    from abovqa.finetune import NonFiniteTrainingError, finetune, find_checkpoints

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == 6:
                with torch.no_grad():
                    next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(float("nan"))

    work = fresh_work(study, tmp_path)
    with pytest.raises(NonFiniteTrainingError, match="checkpoint-5"):
        finetune(work, "vlm-qlora", model="qwen2.5-vl-7b", max_steps=20, run="nan", save_steps=5, predict_test=False,
                 verbose=False, callbacks=[Poison()], num_workers=0)
    kept = find_checkpoints("nan", work, roots=[])
    assert kept.ok.all() and kept.step.max() == 5


def test_qlora_budget_stop_then_resume(study, tmp_path):
    "A session budget stops a TRL run with a checkpoint; the same call with a fresh budget resumes it and finishes."
    from abovqa.core import TimeBudget
    from abovqa.finetune import checkpoint_step, finetune
    work = fresh_work(study, tmp_path)
    kw = dict(model="qwen2.5-vl-7b", max_steps=150, run="budget", predict_test=False, verbose=False, num_workers=0)
    short = finetune(work, "vlm-qlora", budget=TimeBudget(hours=4 / 3600, margin_minutes=0), **kw)
    assert short["status"] == "stopped_for_budget" and 0 < short["global_step"] < 150
    assert checkpoint_step(short["resume_from"]) == short["global_step"]
    done = finetune(work, "vlm-qlora", **kw)
    assert done["status"] == "complete" and done["global_step"] == 150 and done["resumed_from_step"] == short["global_step"]
