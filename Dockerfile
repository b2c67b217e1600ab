# llm-proxy image: a builder that installs the locked dependencies with uv, and a distroless
# runtime (no shell, no package manager, no compiler) that runs as nonroot (65532) and works with a
# read-only root filesystem. `make image` builds it as llm-proxy:dev, even with no image registry.
#
# The bases are build arguments; both are Debian 12 with Python 3.11. The venv is built for the
# runtime's interpreter, RUNTIME_PYTHON (distroless python3: /usr/bin/python3.11).
ARG BUILDER_IMAGE=python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/python3-debian12

FROM ${BUILDER_IMAGE} AS builder
ARG UV_VERSION=0.13.9
ARG RUNTIME_PYTHON=/usr/bin/python3.11
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3.11 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /app
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN /opt/uv/bin/uv sync --frozen --no-dev --no-install-project
COPY container.py cli.py ./
COPY domain domain
COPY application application
COPY adapters adapters
COPY simulator simulator
# The project as a wheel (not an editable link to /app), then the venv's interpreter pointed at
# the runtime's Python: a python.org builder keeps it in /usr/local/bin, Debian in /usr/bin.
RUN /opt/uv/bin/uv sync --frozen --no-dev --no-editable \
    && ln -sf "${RUNTIME_PYTHON}" /app/.venv/bin/python \
    && sed -i "s|^home = .*|home = ${RUNTIME_PYTHON%/*}|" /app/.venv/pyvenv.cfg \
    && mkdir -p /staging/cache

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="llm-proxy" \
      org.opencontainers.image.description="gRPC inference proxy for OpenAI and Gemini with a semantic cache"
COPY --from=builder /app/.venv /app/.venv
# The embedded cache's directory, writable by nonroot; a volume, so --read-only still works.
COPY --from=builder --chown=65532:65532 /staging/cache /var/cache/llm-proxy
ENV PATH=/app/.venv/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CACHE_DIR=/var/cache/llm-proxy \
    HOME=/home/nonroot
VOLUME ["/var/cache/llm-proxy"]
USER 65532:65532
WORKDIR /home/nonroot
# gRPC, metrics/health, and the OpenAI-compatible HTTP API.
EXPOSE 50051 9090 8080
# `serve` drains in-flight calls for SHUTDOWN_GRACE on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["llm-proxy"]
CMD ["serve"]
