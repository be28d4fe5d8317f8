"""Shared fixtures: the repository root, its venv binaries, and an isolated cache per session; the built wheel and
Kaggle's image as a venv, to test the product as a user installs it."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMAGE_VENV = REPO / ".venv-kaggle"  # `make .venv-kaggle`: what Kaggle's image preinstalls, without abovqa
IMAGE_CONSTRAINTS = REPO / "kaggle" / "image-constraints.txt"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session", autouse=True)
def offline_env(tmp_path_factory):
    "Tests never reach a hub, and build their tiny models and sample in a cache of their own."
    os.environ["ABOVQA_CACHE"] = str(tmp_path_factory.mktemp("abovqa-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")
    yield


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Path:
    "A curated sample with template questions, shared read-only by the tests (each copies what it changes)."
    from abovqa.curate import curate
    from abovqa.qagen import generate
    from abovqa.sample import sample_root
    work = tmp_path_factory.mktemp("study")
    curate(sample_root(), work)
    generate(work)
    return work


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    "The abovqa wheel, built once per session the way `abovqa kaggle build` builds it (a temporary copy: no build/ lands here)."
    from abovqa.kaggle import build_wheel
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def kaggle_image_python() -> Path:
    "The python of the image venv (`make .venv-kaggle`, built here if `make test` did not): Kaggle's preinstalled stack."
    if not (IMAGE_VENV / ".image-installed").is_file():
        subprocess.run(["make", ".venv-kaggle"], cwd=REPO, check=True)
    return IMAGE_VENV / "bin" / "python"


def _purelib(python) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip())


def overlay_venv(image_python, dest) -> Path:
    """A fresh venv at `dest` layered over the image venv: it sees every package of the image, and pip (the image's,
    run as `dest/bin/python -m pip`) installs into `dest` only what is missing or must change. pip never uninstalls
    outside the venv it runs in, so the image venv stays as built. A `python3` Jupyter kernel is registered in
    `dest` (papermill runs the pipeline with that kernel name); run it with `overlay_env(dest)`. Returns its python."""
    dest = Path(dest)
    subprocess.run([str(image_python), "-m", "venv", "--without-pip", str(dest)], check=True)
    python = dest / "bin" / "python"
    # addsitedir, not a bare path: the image's own .pth files (namespace packages, setuptools' shims) apply too
    (_purelib(python) / "_image_venv.pth").write_text(f"import site; site.addsitedir({str(_purelib(image_python))!r})\n")
    image_prefix = subprocess.run([str(image_python), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True)
    (dest / "image-venv.txt").write_text(image_prefix.stdout.strip())  # for overlay_env's JUPYTER_PATH
    subprocess.run([str(python), "-m", "ipykernel", "install", "--prefix", str(dest), "--name", "python3",
                    "--display-name", "Python 3 (overlay)"], check=True, capture_output=True)
    return python


def overlay_env(dest, **extra) -> dict:
    """The environment to run commands of the overlay venv `dest` in: its bin/ first, its kernel found before any
    user-wide one, its own NLTK data (WordNet is copied there on first use) and tiny-model cache, offline hubs, and
    nothing of this checkout on the path."""
    dest = Path(dest)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "JUPYTER_PATH", "NLTK_DATA")}
    env.update(PATH=f"{dest / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(dest), PYTHONNOUSERSITE="1",
               # the overlay's kernel first; then the image's Jupyter data (nbconvert's templates live there)
               JUPYTER_PATH=os.pathsep.join(str(Path(p, "share", "jupyter")) for p in (dest, (dest / "image-venv.txt").read_text())),
               NLTK_DATA=str(dest / "nltk_data"),
               ABOVQA_CACHE=str(dest / "abovqa-cache"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")
    env.update(extra)
    return env


def fresh_work(study: Path, tmp_path: Path, name: str = "w") -> Path:
    "A private work dir holding a copy of the study's curated/ and qa/ stages."
    work = tmp_path / name
    for stage in ("curated", "qa"):
        shutil.copytree(study / stage, work / stage)
    return work


def kill_mid_run(script: Path, work: Path, cache: Path, at_least: int, timeout: float = 120) -> int:
    "Run `python script work`, SIGKILL it once `cache` holds `at_least` records, and return how many it holds then."
    import os
    import signal
    import subprocess
    import time
    proc = subprocess.Popen([sys.executable, str(script), str(work)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    count = lambda: sum(1 for p in cache.glob("*.jsonl") for _ in open(p))
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if count() >= at_least:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stdout.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return count()
