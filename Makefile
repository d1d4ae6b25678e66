# Every target bootstraps .venv itself; re-running is quick once installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the 'deepspeed' extra of pyproject.toml: DeepSpeed builds from source against the installed torch
DEEPSPEED := 'deepspeed>=0.19,<0.20' 'transformers>=4.46'

.PHONY: demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,metrics,gpl]'
	$(PY) -m pip install --quiet --no-build-isolation $(DEEPSPEED)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) launch/train.py --config demo --resume auto
	$(PY) launch/enhance.py --checkpoint runs/demo --shift 5 --write-shifted -o runs/demo/enhanced data/demo/guit_e_slide.flac
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir runs/demo/tb"

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) launch/bench.py all

clean:
	rm -rf runs cache
