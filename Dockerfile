# The gateway's container image. Build from the repository root:
#   docker build -t gateway:0.1.0 .
#
# Layout (deploy/README.md, "The image"):
#   /etc/gateway/gateway.yaml     config (a placeholder; mount your own: a ConfigMap)
#   /etc/gateway/providers.d/     one provider per *.yaml (a second ConfigMap)
#   /etc/gateway/keys/            private key(s) that unseal (a Secret)
#   /opt/gateway/                 the virtualenv with the gateway installed
#
# Runs as uid 10001 and writes nothing to its filesystem, so it runs with a
# read-only root filesystem. Every dependency installs from a wheel: no
# compiler in either stage.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: install the package and its dependencies into a virtualenv ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/gateway
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# pip byte-compiles while installing: the read-only runtime image cannot
# write .pyc files later, and recompiling at every start would slow it down.
RUN /opt/gateway/bin/pip install . \
    && /opt/gateway/bin/pip uninstall --yes pip
COPY deploy/docker/healthcheck.py /opt/gateway/healthcheck.py

# ---- runtime: the same base (same Python), no sources, no build tools ----
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml
RUN groupadd --gid 10001 gateway \
    && useradd --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/gateway/providers.d /etc/gateway/keys
COPY --from=build /opt/gateway /opt/gateway
COPY deploy/docker/gateway.yaml /etc/gateway/gateway.yaml
# Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
WORKDIR /etc/gateway
EXPOSE 8080
# Docker only: Kubernetes ignores HEALTHCHECK and uses the pod's probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "/opt/gateway/healthcheck.py", "/healthz"]
# Exec form: the gateway is PID 1 and gets SIGTERM itself, then drains
# requests in flight for up to --shutdown-grace seconds (default 30).
ENTRYPOINT ["gateway", "serve"]
