"""One training process vs DDP: `abovqa.finetune.finetune(..., processes=N)` on the same study, same steps.

Prints, per process count: optimizer steps, examples seen (steps x effective batch), the Trainer's train seconds and
samples/s, and the wall time including the launch (imports and model loading in every rank). On a CPU the ranks use
gloo (a functional check more than a speed-up: the ranks share the cores); on a Kaggle T4x2 the same script measures
the second GPU's gain (`--size full` there, with the model in the hub cache).

    python benchmarks/ddp.py [--steps 200] [--processes 1 2] [--recipe blip-lora] [--size tiny]
"""
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--recipe", default="blip-lora")
    p.add_argument("--size", default="tiny")
    p.add_argument("--work", help="a study with qa/ (default: the embedded sample, curated here)")
    a = p.parse_args()

    from abovqa.finetune import finetune
    tmp = Path(tempfile.mkdtemp(prefix="abovqa-ddp-bench-"))
    study = Path(a.work) if a.work else tmp / "study"
    if not a.work:
        from abovqa.curate import curate
        from abovqa.qagen import generate
        from abovqa.sample import sample_root
        curate(sample_root(), study)
        generate(study)
    rows = []
    for n in a.processes:
        work = tmp / f"p{n}"
        for stage in ("curated", "qa"):
            shutil.copytree(study / stage, work / stage)
        started = time.time()
        r = finetune(work, a.recipe, size=a.size, max_steps=a.steps, run=f"bench-p{n}", processes=n, predict_test=False,
                     verbose=False, num_workers=0, save_steps=a.steps)
        rows.append({"processes": n, "steps": r["global_step"], "effective_batch": r["effective_batch"],
                     "examples": r["global_step"] * r["effective_batch"], "epoch": round(r["epoch"], 3),
                     "train_seconds": round(r["train_seconds"], 2), "samples_per_s": r["samples_per_s"],
                     "wall_seconds": round(time.time() - started, 2), "best_metric": r["best_metric"]})
        print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
