"""Kaggle as it really is, simulated: every built kernel runs in dependency order in Kaggle's image (the floor venv),
with /kaggle/input mounted read-only as Kaggle mounts it (an ABO copy in a nested layout, the wheel, the wheelhouse,
tiny weights as a Kaggle Model, the upstream kernels' outputs), the network cut; then a second session of the
fine-tune resumes from the first one's output, and a step without its upstream stops with a message that says so.

Each kernel runs in its own mount namespace (`unshare -m -n`, as root): a tmpfs over /kaggle, every input
bind-mounted read-only under /kaggle/input, a fresh folder as /kaggle/working, loopback only."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import BIN, overlay_env, overlay_venv

USER, ABO = "sim", "abo-catalog"
WEIGHTS = "blip-tiny/transformers/default/1"  # a Kaggle Model: /kaggle/input/<model>/<framework>/<variation>/<version>
PARAMS = ["30_baselines.models=[blip-vqa-base]", "30_baselines.size=full",  # full size: the attached Kaggle Model
          "40_finetune_lora.size=full", "40_finetune_lora.config=demo", "40_finetune_lora.max_steps=40",
          "40_finetune_lora.overrides={eval_steps: 20}",
          "41_finetune_qlora.model=llava-1.5-7b", "41_finetune_qlora.train_with_options=[false]", "41_finetune_qlora.max_steps=8",
          "70_captioning.models=[blip-caption-base]", "70_captioning.max_steps=6", "preset=balanced"]
# Each session starts here (TimeBudget counts from it): the first fine-tune session is already at its budget, so it
# trains one step, saves it and stops, exactly as the last session before Kaggle's 12-hour wall would.
SPENT = 12 * 3600


def _mount_script(inputs: dict, working: Path, command: list[str]) -> str:
    lines = ["set -e", "ip link set lo up", "mount -t tmpfs tmpfs /kaggle", "mkdir -p /kaggle/working"]
    for mount, source in inputs.items():
        target = f"/kaggle/input/{mount}"
        lines += [f"mkdir -p {target}", f"mount --bind {source} {target}", f"mount -o remount,ro,bind {target}"]
    lines += [f"mount --bind {working} /kaggle/working", "cd /kaggle/working", "exec " + " ".join(map(str, command))]
    return "\n".join(lines)


class Kaggle:
    "Runs built kernels as Kaggle would: each in a fresh /kaggle/working, its sources attached read-only, no network."

    def __init__(self, root: Path, built: Path, python: Path, datasets: dict, models: dict):
        self.root, self.built, self.python, self.datasets, self.models = root, built, python, datasets, models
        self.outputs: dict[str, Path] = {}  # kernel slug -> the newest finished version's output
        self.seconds: dict[str, float] = {}

    def run(self, step: str, session: str = "", attach_kernels: bool = True, session_start: float | None = None):
        meta = json.loads((self.built / step / "kernel-metadata.json").read_text())
        slug = meta["id"].split("/")[1]
        inputs = {d.split("/")[1]: self.datasets[d] for d in meta["dataset_sources"]}
        inputs |= {"/".join(m.split("/")[1:]): self.models[m] for m in meta["model_sources"]}
        if attach_kernels:  # a kernel sees the newest finished version of each attached kernel (itself included)
            inputs |= {k.split("/")[1]: self.outputs[k.split("/")[1]] for k in meta["kernel_sources"] if k.split("/")[1] in self.outputs}
        working = self.root / "outputs" / f"{step}{session}"
        working.mkdir(parents=True)
        executed = self.root / "executed" / f"{step}{session}.ipynb"
        executed.parent.mkdir(exist_ok=True)
        command = [self.python, "-m", "papermill", "-k", "python3", "--log-level", "ERROR", self.built / step / meta["code_file"], executed]
        env = overlay_env(self.python.parent.parent, KAGGLE_KERNEL_RUN_TYPE="Batch", HOME=str(self.root / "home"),
                          ABOVQA_SESSION_START=str(session_start or time.time()),
                          OMP_NUM_THREADS="1")  # 2 cores shared with Jupyter and pip: spinning OpenMP threads only slow it
        for key in [k for k in env if k.startswith("PIP_")] + ["HF_HUB_OFFLINE", "ABOVQA_CACHE", "ABOVQA_WORK", "ABOVQA_NOTEBOOKS",
                                                               "ABOVQA_WEIGHTS"]:
            env.pop(key, None)  # the setup cell decides; tiny models and the sample (if anything asked) go under HOME
        env["PIP_CONFIG_FILE"] = os.devnull  # Kaggle's pip, not this machine's indexes and caps
        started = time.time()
        done = subprocess.run(["unshare", "-m", "-n", "sh", "-c", _mount_script(inputs, working, command)], env=env,
                              capture_output=True, text=True, timeout=900)
        self.seconds[f"{step}{session}"] = round(time.time() - started, 1)
        if done.returncode == 0:
            self.outputs[slug] = working
        return done, working, executed


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def kaggle(tmp_path_factory, kaggle_image_python, built_wheel):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("the Kaggle simulation needs root and unshare (mount namespaces, no network)")
    from abovqa.models import ensure_tiny
    from abovqa.sample import write_sample
    root = tmp_path_factory.mktemp("kaggle")
    Path("/kaggle").mkdir(exist_ok=True)  # the mount point; what is mounted on it lives in each kernel's namespace only
    # an ABO copy as people upload it: listings and images in folders of their own, one level down
    catalog = root / "datasets" / ABO
    write_sample(root / "abo-tmp", n_listings=150, seed=7, defects=True)
    (catalog / "abo-listings").mkdir(parents=True)
    shutil.move(root / "abo-tmp" / "listings", catalog / "abo-listings" / "listings")
    (catalog / "abo-images-small").mkdir()
    shutil.move(root / "abo-tmp" / "images", catalog / "abo-images-small" / "images")
    model = root / "models" / WEIGHTS
    shutil.copytree(ensure_tiny("blip-vqa-base"), model)  # saved with save_pretrained: a snapshot like a real one
    built = root / "built"
    started = time.time()
    command = [str(BIN / "abovqa"), "kaggle", "build", "--all", "--user", USER, "--abo-dataset", f"{USER}/{ABO}",
               "--out", str(built), "--wheel", str(built_wheel), "--gpus", "0", "--image-python", str(kaggle_image_python),
               "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
               "--weights", f"blip-vqa-base={USER}/{WEIGHTS}", "--params", *PARAMS]
    build = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=root)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    build_seconds = round(time.time() - started, 1)
    python = overlay_venv(kaggle_image_python, root / "image")  # Kaggle's image; each setup cell installs into it
    sim = Kaggle(root, built, python,
                 datasets={f"{USER}/{ABO}": catalog, f"{USER}/abovqa-wheel": built / "abovqa-wheel", f"{USER}/abovqa-deps": built / "abovqa-deps"},
                 models={f"{USER}/{WEIGHTS}": model})
    sim.build, sim.build_seconds, sim.catalog = build, build_seconds, catalog
    sim.results = {}
    for step in ["10_curate", "20_generate_qa", "30_baselines"]:
        sim.results[step] = sim.run(step)
    # the fine-tune over two sessions: the first starts with its budget spent, the second resumes from its output
    sim.results["40_finetune_lora-1"] = sim.run("40_finetune_lora", "-1", session_start=time.time() - SPENT)
    sim.results["40_finetune_lora"] = sim.run("40_finetune_lora", "-2")
    for step in ["41_finetune_qlora", "50_evaluate", "60_error_analysis", "70_captioning"]:
        sim.results[step] = sim.run(step)
    sim.results["30_alone"] = sim.run("30_baselines", "-alone", attach_kernels=False)
    summary = {name: {"seconds": sim.seconds[name], "output_mb": round(_du(sim.root / "outputs" / name) / 2**20, 1)}
               for name in sim.seconds}
    print(f"\nKaggle simulation: build {build_seconds} s; wheelhouse {_du(built / 'abovqa-deps') / 2**20:.1f} MB; "
          f"per kernel: {json.dumps(summary)}")
    return sim


def _ok(result):
    done, working, executed = result
    assert done.returncode == 0, (done.stdout[-2000:] + done.stderr[-4000:])
    return working, executed.read_text()


def test_the_build_wires_every_step_to_its_upstream_kernels(kaggle):
    meta = {s: json.loads((kaggle.built / s / "kernel-metadata.json").read_text()) for s in kaggle.results if "-" not in s and "_alone" not in s}
    assert meta["50_evaluate"]["kernel_sources"] == [f"{USER}/abovqa-30-baselines", f"{USER}/abovqa-40-finetune-lora",
                                                     f"{USER}/abovqa-41-finetune-qlora", f"{USER}/abovqa-50-evaluate"]
    assert meta["30_baselines"]["model_sources"] == [f"{USER}/{WEIGHTS}"]
    assert not any(m["enable_internet"] for m in meta.values()), kaggle.build.stdout  # everything attached: offline
    wheels = sorted(p.name for p in (kaggle.built / "abovqa-deps").glob("*.whl"))
    for name in ("trl", "bitsandbytes", "bert_score", "sacrebleu", "pycocoevalcap"):
        assert any(w.lower().startswith(name) for w in wheels), f"{name} is not in the wheelhouse: {wheels}"
    assert not any(w.startswith(("torch-", "transformers-", "nvidia")) for w in wheels), "the image's packages never travel"


def test_every_kernel_runs_offline_from_the_wheel_on_the_attached_catalog(kaggle):
    for step in ("10_curate", "20_generate_qa", "30_baselines", "41_finetune_qlora", "60_error_analysis", "70_captioning"):
        working, text = _ok(kaggle.results[step])
        assert "abovqa from /kaggle/input/abovqa-wheel/abovqa-" in text and "internet: False" in text
        assert "GB  in /kaggle/working" in text  # the output size, printed at the end
    working, text = _ok(kaggle.results["50_evaluate"])
    stats = json.loads((kaggle.outputs["abovqa-10-curate"] / "curated" / "stats.json").read_text())
    assert stats["images_root"].startswith(f"/kaggle/input/{ABO}/abo-images-small/")
    # the final metrics are over the attached catalog's images, not the embedded sample's
    from abovqa.sample import sample_root
    embedded = set(pd.read_csv(sample_root() / "images" / "metadata" / "images.csv.gz").image_id)
    attached = set(pd.read_csv(kaggle.catalog / "abo-images-small" / "images" / "metadata" / "images.csv.gz").image_id)
    qa = pd.read_parquet(working / "qa" / "qa.parquet")
    summary = pd.read_csv(working / "metrics" / "summary.csv")
    assert set(qa.image_id) <= attached and not set(qa.image_id) & embedded
    assert {"blip-vqa-base-full", "blip-vqa-base-full-lora-demo"} <= set(summary.run), summary.run.tolist()
    for run in summary.run:
        scored = pd.read_parquet(working / "metrics" / f"{run}.parquet")
        assert set(scored.qa_id) <= set(qa.qa_id)
    assert not (kaggle.root / "home" / ".cache" / "abovqa" / "sample").exists(), "nothing built the embedded sample"


def test_the_fine_tune_resumes_in_its_next_session(kaggle):
    first, text1 = _ok(kaggle.results["40_finetune_lora-1"])
    assert "'status': 'stopped_for_budget'" in text1 and list((first / "checkpoints").glob("*/checkpoint-*"))
    second, text2 = _ok(kaggle.results["40_finetune_lora"])
    assert "'status': 'complete'" in text2 and "'resumed_from_step': 1" in text2
    assert list((second / "adapters").glob("*/adapter_model.safetensors"))


def test_kaggle_build_works_from_the_installed_wheel(kaggle, built_wheel, tmp_path):
    "In the image with abovqa installed from its wheel (no checkout anywhere), the build repacks the installed kit."
    import zipfile
    done = subprocess.run([str(kaggle.python.parent / "abovqa"), "kaggle", "build", "60_error_analysis", "--no-deps", "--user", USER,
                           "--abo-dataset", f"{USER}/{ABO}", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=tmp_path, env=overlay_env(kaggle.python.parent.parent), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [repacked] = (tmp_path / "out" / "abovqa-wheel").glob("abovqa-*.whl")
    original, again = zipfile.ZipFile(built_wheel), zipfile.ZipFile(repacked)
    content = lambda z: {n: z.read(n) for n in z.namelist() if not n.endswith("/RECORD")}
    assert content(again) == content(original), "the repacked wheel holds the very files of the installed one"
    assert (tmp_path / "out" / "60_error_analysis" / "kernel-metadata.json").is_file()


def test_a_step_without_its_upstream_stops_and_says_what_to_attach(kaggle):
    done, working, executed = kaggle.results["30_alone"]
    assert done.returncode != 0
    text = done.stderr + done.stdout
    assert "MissingStageError" in text and "20_generate_qa" in text and "attach the output" in text
    assert not list(working.glob("predictions/*.parquet")), "no predictions on made-up questions"
