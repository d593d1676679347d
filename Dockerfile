# syntax=docker/dockerfile:1
# The tiergate sidecar image:  docker build -t tiergate .
#
# build:   the virtual env from requirements.lock (every hash checked), the Cython
#          engine compiled into a wheel, then a runtime venv with only what
#          `tiergate serve` needs (scripts/lock_subset.py: the same locked versions
#          and hashes, no dev tools).
# runtime: python slim, that venv, a non-root user, the data directory as a volume,
#          `tiergate health` (a gRPC health check) as the HEALTHCHECK.
# The container runs `tiergate serve` with the flags below: the same command and
# flags the tests run (tests/deploy/test_deploy_files.py checks them with
# `tiergate check-config`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# A C compiler for the extension; Debian's current versions (not pinned: the
# security updates of the base image's release are wanted).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock ./
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml setup.py README.md ./
COPY scripts/lock_subset.py scripts/
COPY ext ext
COPY src src
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/build/bin/python scripts/lock_subset.py requirements.lock > /wheels/runtime.lock \
    && python -m venv /opt/tiergate \
    && /opt/tiergate/bin/pip install --require-hashes --no-deps -r /wheels/runtime.lock \
    && /opt/tiergate/bin/pip install --no-deps /wheels/tiergate-*.whl \
    && TIERGATE_REQUIRE_EXTENSIONS=1 /opt/tiergate/bin/tiergate check-config --data-dir none

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 tiergate \
    && useradd --system --uid 10001 --gid tiergate --no-create-home \
        --home-dir /var/lib/tiergate --shell /usr/sbin/nologin tiergate \
    && mkdir -p /var/lib/tiergate \
    && chown tiergate:tiergate /var/lib/tiergate
COPY --from=build /opt/tiergate /opt/tiergate
# The compiled engine or nothing: an image that fell back to pure Python would
# start slower and decide more slowly without saying so.
ENV PATH=/opt/tiergate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TIERGATE_REQUIRE_EXTENSIONS=1
# Numeric, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/tiergate
VOLUME ["/var/lib/tiergate"]
# gRPC, the webhook receiver, /metrics (the last two only when their flags are given).
EXPOSE 50051 8080 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["tiergate", "health", "--target", "127.0.0.1:50051", "--timeout", "3"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tiergate", "serve"]
# Beyond loopback only with a token (or TLS): mount the token at this path, e.g.
# as a Docker or Kubernetes secret; without it the sidecar refuses to start.
CMD ["--listen", "0.0.0.0:50051", "--data-dir", "/var/lib/tiergate", \
     "--token-file", "/run/secrets/tiergate_token", "--log-format", "json"]
