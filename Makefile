# Every target sets up .venv itself: `make demo` and `make test` are the first and only commands
# a fresh machine needs. TORCH_SPEC picks the torch build (CPU wheel 2.13.0 by default here;
# e.g. `make test TORCH_SPEC="torch==2.5.1 --index-url ..."` elsewhere).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.abovqa-installed
# The "image venv": what Kaggle's notebook image preinstalls (kaggle/image-*.txt), without abovqa
KAGGLE_VENV := .venv-kaggle
KAGGLE_STAMP := $(KAGGLE_VENV)/.image-installed
WORK ?= runs/demo
export NLTK_DATA := $(abspath $(VENV))/nltk_data
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test nbtest docs export clean bench chromium wheel .venv-kaggle

setup: $(STAMP)

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (abovqa)" >/dev/null
	# WordNet for METEOR/WUPS, offline: Debian's files copied into the venv's NLTK data dir
	test -d /usr/share/wordnet || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null; }
	$(BIN)/python -c "from abovqa.metrics import ensure_wordnet; ensure_wordnet()"
	touch $@

# Kaggle's image as a venv (torch from TORCH_SPEC, the rest pinned as Kaggle pins it), built once and reused:
# tests/test_demo.py layers a throwaway venv over it (never installing into it), pip-installs the built wheel there
# and runs `abovqa demo` offline, as a Kaggle user would. Refresh the lists as kaggle/image-constraints.txt says.
.venv-kaggle: $(KAGGLE_STAMP)

$(KAGGLE_STAMP): kaggle/image-constraints.txt kaggle/image-packages.txt
	test -x $(KAGGLE_VENV)/bin/python || $(PYTHON) -m venv $(KAGGLE_VENV)
	$(KAGGLE_VENV)/bin/python -m pip install -q --upgrade pip
	$(KAGGLE_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(KAGGLE_VENV)/bin/python -m pip install -q -c kaggle/image-constraints.txt -r kaggle/image-packages.txt
	touch $@

# The product: dist/abovqa-*.whl, notebooks included (setup.py's build_py), built from a temporary copy of the
# checkout so no build/ or egg-info is left in it.
wheel: $(STAMP)
	rm -f dist/abovqa-*.whl
	$(BIN)/python -c 'import sys; from abovqa.kaggle import build_wheel; print(build_wheel(sys.argv[1]))' dist

# The docs test drives Debian's headless Chromium (no browser download: the package registry only).
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

demo: $(STAMP)
	$(BIN)/abovqa demo --work $(WORK)

# tests/ holds the integration suite. The library notebooks' own asserts run once, inside it: tests/test_docs.py builds
# the site executing every cell nbdev_test would (and fails on any error), so the pages show what the tests checked.
# `make nbtest` is the quicker loop while editing notebooks.
test: $(STAMP) $(KAGGLE_STAMP) chromium
	$(BIN)/python -m pytest -q --durations=12 tests

nbtest: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2 --timing

docs: $(STAMP)
	$(BIN)/abovqa docs _site $(if $(wildcard $(WORK)/notebooks),--work $(WORK))

# After editing notebooks: regenerate the package and README (Quarto-free), clean the notebooks.
export: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(BIN)/jupyter nbconvert --to markdown nbs/index.ipynb --output-dir . --output README --log-level WARN

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf runs _site _docs .pytest_cache
