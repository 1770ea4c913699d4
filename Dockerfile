# promptq: one image for the API, the workers and the scheduler.
# Build arg EXTRAS: "vllm" on GPU hosts, "cpu" for vLLM's CPU build, "" for remote-only.
FROM python:3.11-slim
ARG EXTRAS=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY promptq ./promptq
RUN pip install -e ".${EXTRAS:+[$EXTRAS]}" \
 && if [ "$EXTRAS" = "cpu" ]; then pip uninstall -y torchvision torchaudio torchcodec || true; fi
RUN useradd --create-home promptq
USER promptq
ENTRYPOINT ["promptq"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
