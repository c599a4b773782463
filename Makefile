# Every target does its own set-up on a fresh machine: venv, torch (CPU build), the project,
# and the Debian Fashion-MNIST package when apt is there and the files are missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint bench data setup clean

# pins.txt holds torch at the CPU build: without it pip would replace torch with a CUDA build
# (several GB) when it resolves the open_clip extra (open_clip_torch, timm, torchvision).
# The tests run the examples (open_clip_train, lightning) and every --report_to (tensorboard,
# wandb), so `make test` installs those extras too.
$(VENV)/.installed: pyproject.toml pins.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c pins.txt torch
	$(PY) -m pip install -q -c pins.txt -e '.[dev,open_clip,open_clip_train,lightning,tensorboard,wandb]'
	touch $@

setup: $(VENV)/.installed data

data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
		echo "installing dataset-fashion-mnist"; \
		(apt-get install -y -qq dataset-fashion-mnist || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	fi

demo: setup
	$(VENV)/bin/jestkit demo --overwrite

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/selection.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
