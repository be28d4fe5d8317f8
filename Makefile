# Every target sets up .venv itself: `make demo` and `make test` are the first and only commands
# a fresh machine needs. TORCH_SPEC picks the torch build (CPU wheel 2.13.0 by default here;
# e.g. `make test TORCH_SPEC="torch==2.5.1 --index-url ..."` elsewhere).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.abovqa-installed
WORK ?= runs/demo
export NLTK_DATA := $(abspath $(VENV))/nltk_data
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test docs export clean bench chromium

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

# The docs test drives Debian's headless Chromium (no browser download: the package registry only).
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

demo: $(STAMP)
	$(BIN)/abovqa demo --work $(WORK)

# Library notebooks run their own asserts (nbdev_test); tests/ holds the integration suite.
test: $(STAMP) chromium
	$(BIN)/nbdev_test --n_workers 2 --timing
	$(BIN)/python -m pytest -q --durations=12 tests

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
