# syntax=docker/dockerfile:1
# The bndl operator image: the project's own wheel with the `operator` extra (kopf, kubernetes) in a
# virtual environment, run as a non-root user. charts/bndl runs exactly this entrypoint.
#
#   docker build -t bndl-operator .                                   # users: official slim base
#   podman build --build-arg BASE=localhost/bndl-base:... -t ... .    # tests: the local base
#
# BASE must provide python3 (>= 3.11) with the venv module. A virtual environment is used rather
# than the system site-packages so the same steps work on the official image and on Debian's
# python3 (which refuses `pip install` into the system, PEP 668).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python3 -m venv /opt/bndl \
 && /opt/bndl/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/bndl/bin/pip install "$(ls /tmp/wheels/bndl_kubernetes-*.whl)[operator]" \
 && /opt/bndl/bin/pip uninstall --yes pip setuptools wheel \
 && find /opt/bndl -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/bndl/bin/python -m compileall -q /opt/bndl/lib

FROM ${BASE}
LABEL org.opencontainers.image.title="bndl-operator" \
      org.opencontainers.image.description="kopf operator for BndlJob resources" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/bndl /opt/bndl
# 65532 is the conventional "nonroot" uid (distroless); the chart's securityContext sets the same.
USER 65532:65532
ENV PATH=/opt/bndl/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "bndl.k8s"]
