"""Fine-tuning in several processes: DDP through `accelerate launch` (gloo on CPU) and the locked checkpoint copy.

Real processes throughout: the launched ranks are `python -m abovqa.finetune` under accelerate's launcher, the
kill is a SIGKILL of the process that launched them (a dying notebook kernel), the race is two processes
copying the same checkpoint out of an input root at the same moment.
"""
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import psutil
import torch
from safetensors.torch import save_file

from conftest import fresh_work

DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    from abovqa.finetune import finetune
    result = finetune(sys.argv[1], "blip-lora", max_steps=30, save_steps=10, run="ddp", processes=2, num_workers=0)
    print(json.dumps(result))
""")


def test_ddp_two_processes_on_cpu_survive_a_kill(study, tmp_path):
    "2 ranks (gloo): SIGKILL of the launching process takes the ranks with it; the same call resumes and finishes once."
    from abovqa.finetune import finetune, verify_checkpoint
    work = fresh_work(study, tmp_path)
    script = tmp_path / "train.py"
    script.write_text(DDP_SCRIPT)
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen([sys.executable, str(script), str(work)], stdout=log, stderr=subprocess.STDOUT)
    first = work / "checkpoints" / "ddp" / "checkpoint-10"
    deadline = time.time() + 240
    while not verify_checkpoint(first)[0]:
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint within 4 minutes"
        time.sleep(0.05)
    family = psutil.Process(proc.pid).children(recursive=True)  # the launcher and its two ranks
    assert sum("abovqa.finetune" in " ".join(p.cmdline()) for p in family) >= 3, [p.cmdline()[:4] for p in family]
    os.kill(proc.pid, signal.SIGKILL)  # the notebook kernel dies
    proc.wait()
    log.close()
    gone, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, f"ranks outlived the kill: {[p.pid for p in alive]}"
    assert not (work / "adapters" / "ddp").exists()
    streamed = (tmp_path / "killed.log").read_text()
    assert "launching 2 training processes" in streamed and "session plan" in streamed  # rank 0's output reached the caller

    result = finetune(work, "blip-lora", max_steps=30, save_steps=10, run="ddp", processes=2, num_workers=0, verbose=False)
    print({k: result[k] for k in ("status", "global_step", "epoch", "processes", "effective_batch", "resumed_from_step",
                                  "samples_per_s", "train_seconds", "launch_seconds", "test_exact_match")})
    assert result["status"] == "complete" and result["global_step"] == 30 and result["resumed_from_step"] in (10, 20)
    assert result["processes"] == 2 and result["effective_batch"] == 8 and result["per_device_batch"] == 4  # the recipe's 8, split
    assert abs(result["epoch"] - 30 / -(-result["n_train"] // 8)) < 1e-6  # an epoch has one process's number of steps
    checkpoint = work / "checkpoints" / "ddp" / "checkpoint-30"
    assert {p.name for p in checkpoint.glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}  # one per rank
    history = json.loads((work / "adapters" / "ddp" / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h][0] < 10 < 30 == history[-1]["step"]  # one log across the kill
    assert sorted(p.name for p in (work / "adapters").iterdir()) == ["ddp"]  # one adapter, no stray copy
    assert (work / "adapters" / "ddp" / "adapter_model.safetensors").exists()
    qa = pd.read_parquet(work / "qa" / "qa.parquet")
    assert sorted(p.name for p in (work / "predictions").glob("*.parquet")) == ["ddp.parquet"]
    assert len(pd.read_parquet(result["predictions"])) == (qa.split == "test").sum()


def test_ddp_tensorboard_early_stopping_and_peak_memory(study, tmp_path):
    "2 ranks with report_to='tensorboard' and early stopping: one event file (rank 0's), one stop on both ranks, the run finishes."
    import importlib.util
    import pytest
    from abovqa.finetune import finetune
    work = fresh_work(study, tmp_path)
    tensorboard = bool(importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"))
    if not tensorboard:  # refused in the notebook's process, before any rank starts
        with pytest.raises(ImportError, match="pip install tensorboard"):
            finetune(work, "blip-lora", max_steps=8, run="tb", processes=2, report_to="tensorboard", verbose=False)
    # lr 0: the val metric cannot improve, so patience 1 stops at the second evaluation (step 8) -- on both ranks, or they hang
    result = finetune(work, "blip-lora", max_steps=200, save_steps=4, learning_rate=0.0, early_stopping_patience=1, run="es-ddp",
                      processes=2, report_to="tensorboard" if tensorboard else "none", predict_test=False, verbose=False,
                      num_workers=0)
    assert result["status"] == "complete" and result["processes"] == 2
    assert result["global_step"] == 8 and result["early_stopped"] is True
    assert result["peak_gpu_memory_gb"] is None and result["peak_gpu_memory_note"] == "no GPU: a CPU run"
    if tensorboard:
        events = list((work / "checkpoints" / "es-ddp" / "runs").rglob("events.out.tfevents.*"))
        assert len(events) == 1 and events[0].stat().st_size > 0, events  # rank 0 writes; rank 1 writes none
        assert result["report_to"] == ["tensorboard"]


def _race(work, roots, barrier, out):
    from abovqa.finetune import latest_checkpoint, verify_checkpoint
    barrier.wait()  # both processes leave this line together
    path = latest_checkpoint("r", work, roots=roots)
    out.put({"path": str(path), "ok": verify_checkpoint(path), "inode": path.stat().st_ino,
             "pad": (path / "pad.bin").stat().st_size})


def test_two_processes_racing_copy_an_input_checkpoint_once(tmp_path):
    "Two processes resume at once from a checkpoint found only in an input root: one copies, both get the complete copy."
    from abovqa.finetune import verify_checkpoint
    source = tmp_path / "input" / "prev" / "checkpoints" / "r" / "checkpoint-50"
    source.mkdir(parents=True)
    (source / "trainer_state.json").write_text(json.dumps({"global_step": 50}))
    save_file({"w": torch.zeros(4)}, str(source / "adapter_model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"x": 1}, source / name)
    (source / "pad.bin").write_bytes(os.urandom(48 << 20))  # a copy that takes a while: the race window is real
    assert verify_checkpoint(source)[0]
    work = tmp_path / "work"
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(work, [tmp_path / "input" / "prev"], barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    target = work / "checkpoints" / "r" / "checkpoint-50"
    assert got[0]["path"] == got[1]["path"] == str(target)
    assert got[0]["ok"] == got[1]["ok"] == (True, "ok") and got[0]["pad"] == got[1]["pad"] == 48 << 20
    assert got[0]["inode"] == got[1]["inode"] == target.stat().st_ino  # one copy, not replaced by a second
    assert not list(target.parent.glob(".copy-*")) and verify_checkpoint(source)[0]  # no leftovers; the source untouched
