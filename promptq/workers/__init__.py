"""Celery workers: the remote worker (provider APIs) and the GPU worker (vLLM)."""
