# syntax=docker/dockerfile:1
# The fedgate image: CLI, regional ServerApp, ClientApp and the Flower executors that run them.
# Multi-stage: dependencies and the package are built in a throwaway stage; the runtime stage
# holds only the virtual environment and runs as an unprivileged user (UID/GID 49999, the
# same as Flower's official images, so volumes are shared without chown). No key, token or
# password is ever copied in: they live in volumes and compose secrets.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/fedgate
ENV PATH=/opt/fedgate/bin:$PATH
# CPU-only torch first, from the PyTorch CPU index (the PyPI wheel would pull CUDA).
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
WORKDIR /src
# Dependencies in their own layer: they change far less often than the code.
# README.md is optional (pyproject names it); the glob keeps COPY valid without it.
COPY pyproject.toml README.m[d] ./
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); \
print('\n'.join(d['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY fedgate ./fedgate
COPY server ./server
COPY clients ./clients
COPY strategies ./strategies
COPY models ./models
RUN pip install --no-deps . \
    && python -c "import torch, flwr, fedgate.server.region.app, fedgate.clients.app; \
assert torch.__version__.startswith('2.13.0'), torch.__version__; \
assert not torch.cuda.is_available()"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 49999 fedgate \
    && useradd --system --uid 49999 --gid 49999 --create-home --home-dir /home/fedgate fedgate \
    && mkdir -p /fedgate /public /region /device \
    && chown fedgate:fedgate /fedgate /public /region /device
COPY --from=build /opt/fedgate /opt/fedgate
ENV PATH=/opt/fedgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FEDGATE_HOME=/fedgate \
    FLWR_HOME=/home/fedgate/.flwr \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
USER fedgate
WORKDIR /home/fedgate
CMD ["fedgate", "--help"]
