"""Admission in the worker runtime: which chunk may be claimed now."""

from __future__ import annotations

import pytest

from promptq.queues import BULK_BAND, INTERACTIVE_BAND
from promptq.workers.runtime import has_room

BULK, URGENT = BULK_BAND, INTERACTIVE_BAND


def room(
    step: int,
    alone: bool = False,
    *,
    running: int = 0,
    admitting: int = 0,
    alone_running: bool = False,
) -> bool:
    return has_room(
        step,
        alone,
        running=running,
        admitting=admitting,
        alone_running=alone_running,
        max_in_flight=4,
    )


def test_bulk_chunks_wait_once_the_worker_is_full() -> None:
    assert room(BULK, running=3)
    assert not room(BULK, running=4)


@pytest.mark.parametrize("step", [URGENT, BULK - 1])
def test_interactive_chunks_are_admitted_even_when_full(step: int) -> None:
    assert room(step, running=40)


def test_a_suspected_poison_job_runs_only_when_nothing_else_does() -> None:
    assert room(BULK, alone=True)
    assert not room(BULK, alone=True, running=1)
    assert not room(URGENT, alone=True, admitting=1)


def test_nothing_is_admitted_while_a_job_runs_alone() -> None:
    assert not room(URGENT, alone_running=True, running=1)
    assert not room(BULK, alone_running=True, running=1)
