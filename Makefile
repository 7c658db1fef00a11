# The two commands of the Quick start: `make demo` and `make test`. Both create .venv once and reuse it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench-data setup clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# timm is used only for its ImageNet class-name files; its torchvision dependency must not come along
	$(BIN)/pip install -q --no-deps timm==1.0.31
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/omnibridge demo

test: $(STAMP)
	$(BIN)/pytest -q

test-all: $(STAMP)
	$(BIN)/pytest -q -m ''

bench-data: $(STAMP)
	$(BIN)/python bench/datasets.py data

clean:
	rm -rf $(VENV)
