# syntax=docker/dockerfile:1
# The platform image, tiffin/platform:0.1.0: every CPU-side component of tiffin in one image.
#   python -m interceptor            the public edge (the default command)
#   python -m scaler                 KEDA's external scaler (gRPC)
#   python -m proxy                  the sidecar beside each API server
#   python -m runtime.api            the API server
#   python -m tiffin.kube.controller the Kubernetes controller
# Build: `make images` (docker or podman).

# --- build: a virtual environment holding tiffin and its dependencies (all published as wheels for this base) ---
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/tiffin
COPY pyproject.toml README.md ./
COPY tiffin ./tiffin
COPY interceptor ./interceptor
COPY proxy ./proxy
COPY runtime ./runtime
COPY scaler ./scaler
# The project's own dependencies only (the controller's Kubernetes client is one of them); no engine, no
# test tools. compileall: the root filesystem is read-only at run time, so bytecode is made now.
RUN /opt/tiffin/bin/pip install . \
    && /opt/tiffin/bin/python -m compileall -q /opt/tiffin/lib

# --- final: the interpreter, the virtual environment, and nothing used only to build ---
FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="tiffin platform" \
      org.opencontainers.image.description="tiffin's interceptor, scaler, proxy, API server and controller" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
# /var/lib/tiffin: owned by tiffin, so a named volume mounted there (compose's TLS files) is writable.
RUN groupadd --system --gid 10001 tiffin \
    && useradd --system --uid 10001 --gid tiffin --home-dir /home/tiffin --create-home --shell /usr/sbin/nologin tiffin \
    && mkdir -p /var/lib/tiffin/tls \
    && chown -R tiffin:tiffin /var/lib/tiffin
COPY --from=build /opt/tiffin /opt/tiffin
ENV PATH=/opt/tiffin/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TIFFIN_HOST=0.0.0.0 \
    TIFFIN_SCALER_HOST=0.0.0.0 \
    TIFFIN_API_HOST=127.0.0.1
WORKDIR /home/tiffin
USER 10001:10001
EXPOSE 8080 9090
# Fits the default command (the interceptor's admin /healthz); compose and Kubernetes give each other
# component its own check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TIFFIN_ADMIN_PORT', '9090'), timeout=2)"]
CMD ["python", "-m", "interceptor"]
