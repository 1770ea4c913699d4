# promptq: one image for the API, the workers, the scheduler and Flower.
# Build arg EXTRAS: "" (default) for the API, remote workers and the scheduler; "vllm" for
# GPU workers on CUDA hosts; "cpu" for vLLM's CPU build. bin/bootstrap installs wheels only
# (no compiler in python:3.11-slim, none needed), and the demo's model without the
# dependencies it never uses.
FROM python:3.11-slim
ARG EXTRAS=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROMPTQ_VENV=/opt/promptq PATH=/opt/promptq/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY bin ./bin
COPY alembic ./alembic
COPY promptq ./promptq
RUN PROMPTQ_EXTRAS="$EXTRAS" bin/bootstrap
# /var/lib/promptq holds the secrets a deployment generates on first start (see
# bin/docker-entrypoint); the model caches hold converted and downloaded models. Compose
# mounts volumes on all three; made here so the volumes start owned by promptq.
RUN useradd --create-home promptq \
 && mkdir -p /var/lib/promptq /home/promptq/.promptq/models /home/promptq/.cache/huggingface \
 && chown -R promptq /var/lib/promptq /home/promptq
USER promptq
ENTRYPOINT ["/app/bin/docker-entrypoint"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
