"""Run the simulated provider: ``python -m promptq.sim_provider --port N``."""

from __future__ import annotations

from promptq.sim_provider.server import main

if __name__ == "__main__":
    main()
