# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow lint docs bench bench-slow clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/cubesearch demo

test: install
	$(PY) -m pytest -q --durations=15

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(PY) -m ruff check cubesearch tests benchmarks examples docs

# The documentation site (docs/, mkdocs.yml) into site/; broken links and missing pages fail.
docs: install
	$(PIP) install -q -c constraints.txt -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(PY) -m mkdocs build --strict --quiet

# Minutes on 2 CPU cores; each writes its table to benchmarks/results/ (block: stdout).
bench: install
	$(PY) benchmarks/block.py
	$(PY) benchmarks/block_profile.py
	$(PY) benchmarks/data.py
	$(PY) benchmarks/convert.py
	$(PY) benchmarks/search.py --skip-samplers --out benchmarks/results/search-cost.md

# About an hour or more on 2 CPU cores: training speed and memory, the learning check, the
# samplers' hypervolume, the Ray backend, the trials' learning rates.
bench-slow: install
	$(PY) benchmarks/train.py --out benchmarks/results/train.md
	$(PY) benchmarks/train.py --learning --out benchmarks/results/train-learning.md
	$(PY) benchmarks/trial_lr.py
	$(PY) benchmarks/search.py --skip-cost --out benchmarks/results/search-samplers.md
	$(PY) benchmarks/search_ray.py

clean:
	rm -rf $(VENV) build site *.egg-info
