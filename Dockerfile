# The voxtox image: the package with its dependencies at the tested versions (constraints.txt;
# pyproject.toml has the ranges), the offline model
# packages, and espeak-ng + ffmpeg from Debian. One image for every Prefect and voxtox process
# in docker-compose.yml: the Prefect server and services, `voxtox serve` and the GPU worker
# service (torch 2.13.0's Linux wheel from the default index brings its CUDA libraries; an
# NVIDIA driver on the host is all the GPU service needs).
#
#   docker build -t voxtox:0.1.0 .
#   docker build --build-arg PIP_EXTRA_INDEX_URL=<a CPU-only torch index> -t voxtox:0.1.0-cpu .
FROM python:3.11-slim-bookworm

ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=2 \
    TOKENIZERS_PARALLELISM=false \
    VOXTOX_DATA_DIR=/data \
    VOXTOX_MODEL_CACHE_DIR=/models \
    PREFECT_HOME=/home/voxtox/.prefect

RUN apt-get update \
    && apt-get install -y --no-install-recommends espeak-ng ffmpeg tzdata \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/voxtox
COPY pyproject.toml constraints.txt README.md ./
COPY core ./core
COPY flows ./flows
COPY tasks ./tasks
COPY models ./models
COPY storage ./storage
RUN pip install -c constraints.txt ".[offline-models]" \
    && voxtox --help >/dev/null

# Not root; the data directory and the model cache are volumes (docker-compose.yml).
RUN useradd --create-home --uid 1000 voxtox \
    && mkdir -p /data /models \
    && chown voxtox:voxtox /data /models
USER voxtox
VOLUME ["/data", "/models"]

CMD ["voxtox", "--help"]
