# syntax=docker/dockerfile:1
# roomcast image: the `gateway` (default) and `coordinator` commands in one venv.
#
#   docker build -t roomcast:0.1.0 .
#   docker build --build-arg EXTRAS=load -t roomcast-load:0.1.0 .    # + locust, for deploy/k8s/loadtest
#
# Both stages use the same base image, so the venv's interpreter symlinks stay valid when it is
# copied. No HEALTHCHECK: Kubernetes probes /healthz and /readyz (deploy/k8s/base).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: compilers only here, in case a dependency has no wheel for the platform ----------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/roomcast \
 && /opt/roomcast/bin/pip install --upgrade pip setuptools wheel
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so this layer is reused while only code changes.
COPY pyproject.toml README.md ./
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in os.environ.get('EXTRAS', '').split(',') if e]; \
print('\n'.join(p['dependencies'] + [r for e in extras for r in p['optional-dependencies'][e]]))" \
    > /tmp/requirements.txt
RUN /opt/roomcast/bin/pip install -r /tmp/requirements.txt
COPY roomcast ./roomcast
COPY gateway ./gateway
COPY coordinator ./coordinator
# gateway/static/lib/roomcast.js links here: the browser client served at /lib/ and used by /demo/.
COPY clients/js/src ./clients/js/src
RUN /opt/roomcast/bin/pip install --no-deps . \
 && /opt/roomcast/bin/python -c "import uvloop, orjson, asyncpg, websockets, gateway.cli, coordinator.cli" \
 && /opt/roomcast/bin/python -m compileall -q /opt/roomcast

# ---- runtime: the venv and a non-root user, nothing else -------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="roomcast" \
      org.opencontainers.image.description="Horizontally scaled WebSocket gateway for multiplayer game rooms" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 roomcast \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin roomcast
COPY --from=build /opt/roomcast /opt/roomcast
ENV PATH=/opt/roomcast/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    COORDINATOR_HOST=0.0.0.0
# Numeric, so Kubernetes' runAsNonRoot can verify it without looking up /etc/passwd.
USER 10001:10001
# 8765: gateway WebSocket /ws + /healthz /readyz /metrics; 8780: coordinator /healthz /readyz /metrics.
EXPOSE 8765 8780
STOPSIGNAL SIGTERM
CMD ["gateway"]
