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
 && /opt/bndl/bin/python -m compileall -q -x '/kubernetes/aio/' /opt/bndl/lib
# Byte code is compiled here because the root filesystem is read-only at run time (the chart's
# securityContext): without it every start recompiles the kubernetes client in memory. The client's
# asyncio twin (kubernetes.aio, unused: the operator speaks aiohttp itself) is left uncompiled.

FROM ${BASE}
LABEL org.opencontainers.image.title="bndl-operator" \
      org.opencontainers.image.description="kopf operator for BndlJob resources" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/bndl /opt/bndl
# 65532 is the conventional "nonroot" uid (distroless); the chart's securityContext sets the same.
# It gets a passwd entry because kopf names itself after the user (getpass.getuser() fails for a
# uid without one).
RUN groupadd --system --gid 65532 bndl \
 && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin bndl
USER 65532:65532
ENV PATH=/opt/bndl/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "bndl.k8s"]
