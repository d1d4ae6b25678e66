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

# the listening-report tests open pages in Debian's chromium through chromium-driver: installed here when
# running as root on Debian; when that fails, those tests skip and `make test` goes on
CHROMIUM ?= chromium
CHROMEDRIVER ?= chromedriver

test: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null && \
	    { ! command -v $(CHROMIUM) >/dev/null || ! command -v $(CHROMEDRIVER) >/dev/null; }; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium chromium-driver; } || echo "note: chromium / chromium-driver not installed; the browser tests skip"; \
	fi
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) launch/bench.py all

clean:
	rm -rf runs cache
