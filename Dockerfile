# syntax=docker/dockerfile:1
#
# The zgw-gateway container image.
#
#   docker build -t zgw-gateway:0.1.0 .
#   docker run --rm --read-only -p 8000:8000 -p 9100:9100 \
#     -v "$PWD/config.yaml:/etc/zgw-gateway/config.yaml:ro" \
#     -v "$PWD/secrets:/var/run/secrets/zgw:ro" zgw-gateway:0.1.0
#
# Nothing is baked in: the config and every secret are mounted (or passed as environment variables).
# The process runs as UID/GID 10001, the chart's securityContext.runAsUser, and writes nothing to disk,
# so the image works with a read-only root filesystem.
#
# Build arguments:
#   BASE_IMAGE     the Python >= 3.11 base of the image that runs; pin it by digest in your registry
#                  mirror, e.g. --build-arg BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
#   BUILDER_IMAGE  the build stage's base: the same CPython as BASE_IMAGE plus a C compiler and Python's
#                  headers, for the mypyc-compiled request path (issue 23); the image itself has no compiler
#   UV_VERSION     the uv used only to turn uv.lock into a pinned requirements list
#
# Offline builds: put wheels for every locked dependency (plus uv, hatchling, and the compiled build's
# hatch-mypyc, mypy, setuptools and stubs: pyproject.toml's mypyc hook) in ./wheels and pass
# --build-arg PIP_NO_INDEX=1 --network none; scripts/check-image does exactly that.

ARG BASE_IMAGE=python:3.11.14-slim-bookworm
ARG BUILDER_IMAGE=python:3.11.14-bookworm

FROM ${BUILDER_IMAGE} AS builder

ARG UV_VERSION=0.13.9
ARG PIP_NO_INDEX=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_FIND_LINKS=/wheels \
    PIP_NO_INDEX=${PIP_NO_INDEX}

# uv.lock is named so the pattern always matches something; wheels/ is optional.
COPY uv.lock wheels* /wheels/

RUN python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install "uv==${UV_VERSION}"

WORKDIR /src

# Dependencies first: this layer is rebuilt only when the lock file changes, not on every code change.
COPY pyproject.toml uv.lock ./
RUN /opt/uv/bin/uv export --frozen --no-dev --no-hashes --no-emit-project --output-file /tmp/requirements.txt \
    && python3 -m venv /opt/zgw-gateway \
    && /opt/zgw-gateway/bin/pip install --only-binary=:all: --requirement /tmp/requirements.txt

COPY README.md ./
COPY gateway/ ./gateway/
# HATCH_BUILD_HOOKS_ENABLE: the wheel with the request path compiled by mypyc (pyproject.toml's hook).
RUN HATCH_BUILD_HOOKS_ENABLE=1 /opt/zgw-gateway/bin/pip install --no-deps . \
    && /opt/zgw-gateway/bin/zgw-gateway --help > /dev/null


FROM ${BASE_IMAGE}

ARG UID=10001
ARG GID=10001

# A fixed numeric UID/GID so Kubernetes can verify runAsNonRoot without a passwd lookup.
RUN groupadd --gid "${GID}" zgw \
    && useradd --no-log-init --uid "${UID}" --gid "${GID}" --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin zgw

COPY --from=builder /opt/zgw-gateway /opt/zgw-gateway

# Byte code was compiled at install time; a read-only root filesystem must not see write attempts.
ENV PATH=/opt/zgw-gateway/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ZGW_GATEWAY_CONFIG=/etc/zgw-gateway/config.yaml \
    ZGW_GATEWAY_ADMIN_PORT=9100

USER ${UID}:${GID}

# 8000: the proxy; 9100: /metrics, /-/healthy, /-/ready.
EXPOSE 8000 9100

# Kubernetes ignores HEALTHCHECK and uses the chart's probes; plain docker/podman runs use this.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; port = os.environ.get('ZGW_GATEWAY_ADMIN_PORT', '9100'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/-/healthy', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["zgw-gateway"]
CMD ["serve"]
