"""The project's simulated LLM provider: OpenAI chat completions and Anthropic messages over HTTP.

Replies are a pure function of the prompt, and directives in the prompt text
(``[[sim:fail=429x2]]``, ``[[sim:status=400]]``, ``[[sim:sleep=2.5]]``, ``[[sim:tokens=N]]``,
``[[sim:retry_after=0.2]]``) make it misbehave on purpose, so tests meet real provider failures.
"""

from __future__ import annotations

from promptq.sim_provider.app import build_app
from promptq.sim_provider.config import SIM_MODELS, SimConfig
from promptq.sim_provider.server import main, serve

__all__ = ["SIM_MODELS", "SimConfig", "build_app", "main", "serve"]
