# Every target does its own set-up on a fresh machine: a venv with the tested set of packages
# (pins.txt as constraints: torch 2.14.1 + torchvision 0.29.1, CUDA builds that also run on a
# CPU, and every other package at the version the suite last ran with), jestkit editable with
# the extras the tests exercise, and, with apt, Debian's Fashion-MNIST files and chromium (the
# docs' rendering check) when they are missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
FMNIST_DIR := /usr/share/datasets/fashion-mnist
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test lint bench data browser setup docs docs-check dist clean

$(VENV)/.installed: pyproject.toml pins.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c pins.txt torch
	$(PY) -m pip install -q -c pins.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed data browser

# apt-get install, with an update first only when the package lists are too old to find it
define apt_install
	(apt-get install -y -qq $(1) || (apt-get update -qq && apt-get install -y -qq $(1))) >/dev/null
endef

data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
		echo "installing dataset-fashion-mnist"; $(call apt_install,dataset-fashion-mnist); \
	fi

browser:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then \
		echo "installing chromium"; $(call apt_install,chromium); \
	fi

demo: setup
	$(VENV)/bin/jestkit demo --overwrite

# the suite on every core, each test file in one worker (its module fixtures built once)
test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n auto --dist loadfile

docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict

# the built site as a browser shows it: screenshots of the home page and the API page
docs-check: docs browser
	$(PY) -m pytest tests/test_site.py -q

dist: $(VENV)/.installed
	rm -rf dist
	$(PY) -m build --outdir dist
	$(VENV)/bin/twine check --strict dist/*

bench: setup
	$(PY) benchmarks/selection.py

clean:
	rm -rf $(VENV) runs build dist site src/*.egg-info
