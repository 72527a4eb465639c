# Entry points: `make demo` (a tour of the system on a corpus it synthesizes), `make serve` (the demo's index over
# HTTP), `make test`, `make bench`. The browser tests need Debian's chromium and chromium-driver (.ci/run installs them).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export RAY_AUTH_MODE ?= disabled

.PHONY: setup test demo serve bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev,cpu]'
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) jobs/demo.py --workdir demo_run

serve: setup
	$(PY) jobs/serve.py --index demo_run/index --rerank 8

bench: setup
	$(PY) bench/preprocess.py --output bench_results
	$(PY) bench/loader.py --output bench_results
	$(PY) bench/model.py --output bench_results
	$(PY) bench/train.py --output bench_results
	$(PY) bench/embed.py --output bench_results
	$(PY) bench/index.py --output bench_results
	$(PY) bench/serve.py --output bench_results
	$(PY) bench/memory.py --output bench_results

clean:
	rm -rf demo_run bench_results .pytest_cache
