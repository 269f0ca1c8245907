# syntax=docker/dockerfile:1
# notaflow image: `notaflow <command>` (ingress by default; `consume emission`, `migrate`, ...).
# Configuration comes only from NOTAFLOW_* environment variables (see helm/notaflow).

ARG PYTHON_VERSION=3.11

# --- build: wheels for notaflow and every dependency (compilers live only in this stage) ---
FROM python:${PYTHON_VERSION} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN pip wheel --wheel-dir /wheels .

# --- runtime: slim Python, the installed wheels, a non-root user ---
FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    NOTAFLOW_HOST=0.0.0.0 \
    NOTAFLOW_PORT=8000
RUN groupadd --system --gid 10001 notaflow \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin notaflow
# Bind-mount the wheels instead of copying them, so they never become an image layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels notaflow
WORKDIR /app
# Numeric so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
# 8000: ingress HTTP; 8081: consumers' health port (NOTAFLOW_HEALTH_PORT).
EXPOSE 8000 8081
ENTRYPOINT ["notaflow"]
CMD ["ingress"]
