"""A deployment of its own (database, Redis server, processes) for tests that compare a
process's counters with the job rows: nothing else may run jobs there."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import SIM_KEY, sim_gpt_toml, stack_env
from tests.stack import RedisServer, Stack, create_database, drop_database

#: A vllm model no worker serves here: its queue only fills up.
IDLE_GPU_MODEL = "idle-gpu"


@contextmanager
def private_stack(log_dir: Path, home: Path, sim_url: str) -> Iterator[Stack]:
    """A Stack on a new database and a new Redis server; `stack.env` names both."""
    pg_url = create_database("promptq_ops")
    redis = RedisServer(log_dir)
    models = home / "models.toml"
    models.write_text(f"""{sim_gpt_toml(sim_url)}
[[models]]
name = "{IDLE_GPU_MODEL}"
backend = "vllm"
source = "smollm2-135m"
input_per_mtok = 0
output_per_mtok = 0
""")
    env = stack_env(pg_url, redis.url, models, home)
    env["SIM_PROVIDER_KEY"] = SIM_KEY
    stack = Stack(env, log_dir)
    try:
        yield stack
    finally:
        stack.stop()
        redis.stop()
        drop_database(pg_url)
