# syntax=docker/dockerfile:1.7
#
# marc-serve serving images. Targets:
#   cpu          python:3.11-slim + onnxruntime                      (the default: `docker build .`)
#   gpu          python:3.11-slim + onnxruntime-gpu 1.31 (CUDA 13 + cuDNN 9 build) + the CUDA 13 runtime
#                libraries it loads, as NVIDIA's wheels from PyPI (no CUDA base image; the host's driver
#                arrives through the NVIDIA container toolkit: docs/gpu.md)
#   cpu-bundled, gpu-bundled
#                the same with an artifact baked in at /models/current, taken from the named build
#                context `model`:  docker build --target cpu-bundled --build-context model=artifacts/default .
#
# Without a bundled artifact, mount one at /models/current (read-only is enough), or point MARC_ARTIFACT
# elsewhere. The images hold the serving extra only (`.[cpu]` or `.[gpu]`): no torch, no transformers,
# no compiler. Every setting is a MARC_* environment variable (docs/settings.md).
#
# Layer order: dependencies are installed from pyproject.toml alone, then the project's own wheel is
# installed on top with --no-deps, so a code change rebuilds a few hundred kilobytes, not the venv.
#
# `make test` builds and runs cpu and cpu-bundled with podman on a local stand-in for the Python base
# (--build-arg PYTHON_IMAGE=..., made by deploy/docker/python-standin.sh): see docs/operations.md, "Image check";
# `make image-check-gpu` builds and runs gpu the same way (tests/deploy/test_image_gpu.py, docs/gpu.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG ONNXRUNTIME_VERSION=1.31.1

# ---------------------------------------------------------------------------------------------------
# The project itself as a pure-Python wheel (shared by both images).
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY artifact ./artifact
COPY marc ./marc
COPY records ./records
COPY export ./export
COPY service ./service
COPY loadtest ./loadtest
COPY marc_serve ./marc_serve
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------------
# CPU: python:3.11-slim.
FROM ${PYTHON_IMAGE} AS cpu-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 marc \
 && useradd --system --uid 10001 --gid marc --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin marc

FROM cpu-base AS cpu-deps
ARG ONNXRUNTIME_VERSION
COPY pyproject.toml deploy/docker/pyproject_requirements.py /build/
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
 && python /build/pyproject_requirements.py /build/pyproject.toml cpu > /build/requirements.txt \
 && echo "onnxruntime==${ONNXRUNTIME_VERSION}" > /build/constraints.txt \
 && /opt/venv/bin/pip install -r /build/requirements.txt -c /build/constraints.txt

FROM cpu-base AS cpu
COPY --from=cpu-deps /opt/venv /opt/venv
# A copy, not a bind mount of the stage: podman 4.3 cannot mount a stage it took from its cache (the
# project's wheel, ~0.3 MB, stays in this layer).
COPY --from=wheel /wheels /wheels
RUN /opt/venv/bin/pip install --no-deps --no-cache-dir /wheels/*.whl && rm -rf /wheels
# HOME=/tmp: the only writable place when the root filesystem is read-only (compose, k8s).
ENV MARC_ARTIFACT=/models/current \
    MARC_HOST=0.0.0.0 \
    MARC_PORT=8000 \
    HOME=/tmp
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
# /healthz answers as soon as the server is up; the start period covers model loading.
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MARC_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["marc"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------------
# GPU: the CPU image's Python base; onnxruntime-gpu and the CUDA 13 libraries it loads (cuBLAS, cuRAND,
# the CUDA runtime; cuDNN, cuFFT, NVRTC when an operator needs them) come as NVIDIA's wheels from PyPI,
# pinned in deploy/docker/gpu-constraints.txt. Their folders are on LD_LIBRARY_PATH (through the fixed
# /opt/venv/nvidia link), so ONNX Runtime's CUDA provider finds them; the host needs only the NVIDIA
# driver and the NVIDIA container toolkit, which mounts libcuda.so.1. With no GPU visible,
# MARC_PROVIDER=auto serves from the CPU (and says so); MARC_PROVIDER=cuda refuses to start.
FROM cpu-base AS gpu-deps
ARG ONNXRUNTIME_VERSION
COPY pyproject.toml deploy/docker/pyproject_requirements.py deploy/docker/gpu-constraints.txt /build/
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
 && python /build/pyproject_requirements.py /build/pyproject.toml gpu > /build/requirements.txt \
 && echo "onnxruntime-gpu==${ONNXRUNTIME_VERSION}" > /build/constraints.txt \
 && /opt/venv/bin/pip install -r /build/requirements.txt -c /build/constraints.txt -c /build/gpu-constraints.txt \
 && ln -s "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia" /opt/venv/nvidia \
 && test -e /opt/venv/nvidia/cu13/lib/libcublas.so.13 && test -e /opt/venv/nvidia/cudnn/lib/libcudnn.so.9

FROM cpu-base AS gpu
COPY --from=gpu-deps /opt/venv /opt/venv
# A copy, not a bind mount of the stage: podman 4.3 cannot mount a stage it took from its cache (the
# project's wheel, ~0.3 MB, stays in this layer).
COPY --from=wheel /wheels /wheels
RUN /opt/venv/bin/pip install --no-deps --no-cache-dir /wheels/*.whl && rm -rf /wheels
# HOME=/tmp: the only writable place when the root filesystem is read-only (compose, k8s).
ENV MARC_ARTIFACT=/models/current \
    MARC_HOST=0.0.0.0 \
    MARC_PORT=8000 \
    HOME=/tmp \
    LD_LIBRARY_PATH=/opt/venv/nvidia/cu13/lib:/opt/venv/nvidia/cudnn/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MARC_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["marc"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------------
# Bundled variants: an artifact baked into the image. `model` is an empty placeholder stage that a
# named build context of the same name replaces (--build-context model=artifacts/default); without it
# the build stops at the manifest check below with a message saying so.
FROM scratch AS model

FROM gpu AS gpu-bundled
COPY --from=model . /models/current/
RUN python -c "from pathlib import Path; from artifact.manifest import read_manifest; m = read_manifest(Path('/models/current')); print('bundled artifact', m.name, m.fingerprint[:16])" \
 || { echo 'no artifact: build with --build-context model=artifacts/default' >&2; exit 1; }

FROM cpu AS cpu-bundled
COPY --from=model . /models/current/
RUN python -c "from pathlib import Path; from artifact.manifest import read_manifest; m = read_manifest(Path('/models/current')); print('bundled artifact', m.name, m.fingerprint[:16])" \
 || { echo 'no artifact: build with --build-context model=artifacts/default' >&2; exit 1; }

# The default target (the last stage): the CPU image.
FROM cpu AS default
