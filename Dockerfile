# SAM 2 ML backend for Label Studio, on an NVIDIA GPU (falls back to the CPU when none is visible).
#   docker build -t sam2-label-studio .
#   docker run --gpus all -p 9090:9090 -v sam2-models:/home/sam2/.cache/sam2 \
#     -e LABEL_STUDIO_URL=http://<label studio>:8080 -e LABEL_STUDIO_API_KEY=<token> sam2-label-studio
#   docker build --build-arg WITH_RAY=1 ...   also installs requirements-ray.txt (the `ray` pre-annotation engine)
# torch 2.13.0 from PyPI (requirements.txt) is built for CUDA 13.0 (it brings the cuda-toolkit 13.0.3 wheels),
# hence CUDA 13.0's runtime image; the host needs an NVIDIA driver >= 580 and the NVIDIA Container Toolkit.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Ubuntu's python3 (3.12) is updated with the base image; its apt versions are not pinned on purpose.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# WITH_RAY=1: Ray (requirements-ray.txt) for `python -m backend.preannotate --engine ray`; the server needs none.
ARG WITH_RAY=0
WORKDIR /app
COPY requirements.txt requirements-ray.txt ./
RUN python3 -m venv /opt/venv \
    && pip install -r requirements.txt \
    && if [ "$WITH_RAY" = "1" ]; then pip install -r requirements-ray.txt; fi \
    && python -c "import torch; assert torch.version.cuda, 'expected a CUDA build of torch'"

COPY sam2_model/ sam2_model/
COPY backend/ backend/
COPY config/ config/

# Non-root. The volume is the model cache (backend/weights.py): the official checkpoint is fetched into it on
# the first start and verified; later starts find it there. Mount a checkpoint and set SAM2_CHECKPOINT instead
# to fetch nothing. Downloaded media stay in the container (a cache, lost with it).
RUN groupadd --gid 10001 sam2 \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin sam2 \
    && mkdir -p /home/sam2/.cache/sam2 /home/sam2/.cache/sam2-preannotate \
    && chown -R 10001:10001 /home/sam2/.cache
USER 10001:10001
ENV XDG_CACHE_HOME=/home/sam2/.cache \
    SAM2_CACHE_DIR=/home/sam2/.cache/sam2 \
    MEDIA_CACHE_DIR=/home/sam2/.cache/sam2-backend-media \
    PORT=9090 \
    DEVICE=auto
VOLUME ["/home/sam2/.cache/sam2"]
EXPOSE 9090

# start-period: the first start fetches the checkpoint (about 160 MB for the default tiny model, 900 MB for
# large), and the first /health may wait for the model to load on a cold GPU.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", \
         "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['PORT'], timeout=4)"]

# Resolves the checkpoint (SAM2_CHECKPOINT, else SAM2_MODEL fetched into the volume), then execs gunicorn with
# SAM2_CHECKPOINT set to it; a failed fetch exits at once with a message saying how to fix it.
ENTRYPOINT ["python", "-m", "backend.weights", "--exec", \
            "gunicorn", "--config", "config/gunicorn.conf.py", "backend.wsgi:app"]
