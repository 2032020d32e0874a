# syntax=docker/dockerfile:1
# One image, two roles (deploy/docker/entrypoint.sh): `api` (rsd serve on :8000) or `worker`
# (rsd worker, /metrics on :9101). Two targets:
#
#   docker build --target cpu -t rsd-serve:cpu .   python:3.11-slim, torch==2.13.0 CPU wheel (the default target)
#   docker build --target gpu -t rsd-serve:gpu .   CUDA runtime, torch CUDA wheel, TensorRT, onnxruntime-gpu
#
# The bundled model (models/rsd-tiny) is inside; mount another artifact and set RSD_MODEL to serve it.
# The build context is cut down to what is copied here by .dockerignore.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# torch 2.13's Linux wheels on PyPI and the tensorrt / onnxruntime-gpu wheels are CUDA 13 builds; they bring
# their own CUDA user-space libraries, the base image brings the driver hook-up (NVIDIA container toolkit).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------------------------------------------------
# gpu: Python 3.11 (the project's version; Ubuntu ships another) installed by uv under /opt/python
# ---------------------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu-build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN uv python install 3.11 && uv venv --python 3.11 /opt/venv
# torch alone first: the largest layer, kept across source changes
RUN uv pip install torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rsd ./rsd
COPY rsd_cli ./rsd_cli
COPY service ./service
COPY training ./training
COPY model_export ./model_export
# onnxruntime-gpu, not the export extra's CPU onnxruntime: both install the same `onnxruntime` module
RUN uv pip install ".[serve,tensorrt]" onnxruntime-gpu torch==2.13.0

FROM ${CUDA_IMAGE} AS gpu
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RSD_MODEL=/app/models/rsd-tiny \
    RSD_DEVICE=cuda \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN groupadd --system --gid 10001 rsd \
    && useradd --system --uid 10001 --gid rsd --create-home --home-dir /home/rsd --shell /usr/sbin/nologin rsd
COPY --from=gpu-build /opt/python /opt/python
COPY --from=gpu-build /opt/venv /opt/venv
COPY models/rsd-tiny /app/models/rsd-tiny
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/rsd-entrypoint
WORKDIR /app
USER 10001:10001
EXPOSE 8000 9101
# Liveness without curl. The API answers /healthz on 8000; a worker sets
# RSD_HEALTHCHECK_URL=http://127.0.0.1:9101/metrics (docker-compose.yml does).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('RSD_HEALTHCHECK_URL', 'http://127.0.0.1:8000/healthz'), timeout=4)"]
ENTRYPOINT ["rsd-entrypoint"]
CMD ["api"]

# ---------------------------------------------------------------------------------------------------------
# cpu: the CPU wheel of torch (no CUDA libraries: about 1 GB smaller)
# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# Where pip reaches no index (a sandbox), a wheel directory mounted into the build replaces them
# (docs/deployment.md "Without Docker: podman"):
#   podman build -v "$WHEELS:/wheels:ro" --build-arg PIP_SOURCE="--no-index --find-links /wheels" ...
ARG PIP_SOURCE=""
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# torch alone first: the largest layer, kept across source changes
RUN pip install ${PIP_SOURCE:---index-url $TORCH_INDEX} torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rsd ./rsd
COPY rsd_cli ./rsd_cli
COPY service ./service
COPY training ./training
COPY model_export ./model_export
# the pin keeps the installed 2.13.0+cpu wheel (a bare `torch` requirement could pull a CUDA build)
RUN pip install $PIP_SOURCE ".[serve]" torch==2.13.0

FROM ${PYTHON_IMAGE} AS cpu
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RSD_MODEL=/app/models/rsd-tiny
RUN groupadd --system --gid 10001 rsd \
    && useradd --system --uid 10001 --gid rsd --create-home --home-dir /home/rsd --shell /usr/sbin/nologin rsd
COPY --from=cpu-build /opt/venv /opt/venv
COPY models/rsd-tiny /app/models/rsd-tiny
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/rsd-entrypoint
WORKDIR /app
USER 10001:10001
EXPOSE 8000 9101
# Liveness without curl. The API answers /healthz on 8000; a worker sets
# RSD_HEALTHCHECK_URL=http://127.0.0.1:9101/metrics (docker-compose.yml does).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('RSD_HEALTHCHECK_URL', 'http://127.0.0.1:8000/healthz'), timeout=4)"]
ENTRYPOINT ["rsd-entrypoint"]
CMD ["api"]
