# syntax=docker/dockerfile:1
# The App's container image (docs/deploy.md). `stacksona-gate serve` by default; pass `web` or `worker`
# (or any other subcommand) as the container's arguments:
#   docker build -t stacksona-gate .
#   docker run -p 8000:8000 --env-file .env -v stacksona-gate-data:/data stacksona-gate
#   docker run --env-file .env -e DATABASE_URL=postgresql://… stacksona-gate worker

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# README.md: pyproject.toml names it as the long description. app.yml: app/onboarding/app.yml links to it.
COPY pyproject.toml README.md app.yml ./
COPY app ./app
# The App's wheel and one wheel per dependency: the final stage installs from these alone, without an index.
RUN python -m pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="stacksona-gate" \
      org.opencontainers.image.description="GitHub deployment protection rule backed by Stacksona approvals" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    DATABASE_URL=sqlite:////data/stacksona-gate.db
# The wheels are mounted for this step only, so they never become a layer of the image.
# Packages are installed as root (read-only to the App's user); /data is the App's only writable directory.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels stacksona-gate \
    && python -m pip check \
    && groupadd --system --gid 10001 stacksona \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin stacksona \
    && mkdir /data \
    && chown 10001:10001 /data \
    && chmod 0700 /data
WORKDIR /data
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# PORT (web, serve) and WORKER_HEALTH_PORT (worker): /healthz and /metrics.
EXPOSE 8000 9102
# The slim image has no curl. `web` and `serve` answer /healthz on PORT, `worker` on WORKER_HEALTH_PORT:
# the container is healthy when the one it runs answers 200.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request\nports = (os.environ.get('PORT') or '8000', os.environ.get('WORKER_HEALTH_PORT') or '9102')\nfor port in ports:\n    try:\n        if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=3).status == 200:\n            sys.exit(0)\n    except OSError:\n        pass\nsys.exit(1)\n"]
ENTRYPOINT ["stacksona-gate"]
CMD ["serve"]
