# Every target bootstraps .venv itself; re-running is quick once installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) launch/preprocess.py --config demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) launch/bench.py all

clean:
	rm -rf runs cache
