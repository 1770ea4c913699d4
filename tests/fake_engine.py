"""An in-memory stand-in for vLLM's AsyncLLM, as promptq's VllmEngine drives it: at most
`max_num_seqs` requests generate at once and the rest wait in its queue (in arrival
order); a generating request streams `tokens` tokens, then holds its last one until the
test opens `gate`. It records what was submitted, what produced a token and what was
aborted. No vLLM import: the engine wrapper's two vLLM-specific steps (the prompt input
and SamplingParams) are overridden by `fake_vllm_engine`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from promptq.workers.vllm_engine import EngineOptions, VllmEngine

__all__ = ["FakeAsyncLLM", "fake_vllm_engine"]


class _Tokenizer:
    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> str:
        return " ".join(m["content"] for m in messages)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [len(word) for word in text.split()] or [0]


def _output(finish: str | None) -> Any:
    choice = SimpleNamespace(token_ids=[7], text="x", finish_reason=finish)
    return SimpleNamespace(outputs=[choice], num_cached_tokens=0)


class FakeAsyncLLM:
    """vLLM's AsyncLLM as far as VllmEngine uses it."""

    def __init__(self, max_num_seqs: int = 2, tokens: int = 3) -> None:
        self.model_config = SimpleNamespace(max_model_len=512)
        self.vllm_config = SimpleNamespace(
            scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs)
        )
        self.tokens = tokens
        self.gate = asyncio.Event()  # opened: generating requests finish
        self._seqs = asyncio.Semaphore(max_num_seqs)
        self.submitted: list[str] = []
        self.generated: list[str] = []  # requests that produced a first token
        self.aborted: set[str] = set()
        self._changed = asyncio.Condition()

    async def generating(self, *request_ids: str) -> None:
        """Until these requests produced their first token (at most 10 s)."""
        async with asyncio.timeout(10), self._changed:
            await self._changed.wait_for(lambda: set(request_ids) <= set(self.generated))

    def get_tokenizer(self) -> _Tokenizer:
        return _Tokenizer()

    async def abort(self, request_id: str) -> None:
        self.aborted.add(request_id)

    def shutdown(self) -> None:
        self.gate.set()

    async def generate(
        self, prompt: Any, params: Any, request_id: str, priority: int = 0
    ) -> AsyncIterator[Any]:
        self.submitted.append(request_id)
        try:
            async with self._seqs:  # waiting in the engine's queue until a sequence is free
                if request_id in self.aborted:
                    yield _output("abort")
                    return
                self.generated.append(request_id)
                async with self._changed:
                    self._changed.notify_all()
                for _ in range(self.tokens - 1):
                    yield _output(None)
                await self.gate.wait()
                yield _output("abort" if request_id in self.aborted else "stop")
        except asyncio.CancelledError:  # what AsyncLLM.generate does when its caller gives up
            self.aborted.add(request_id)
            raise


class _NoVllm(VllmEngine):
    def _engine_prompt(self, prompt_ids: list[int]) -> Any:
        return prompt_ids

    def _sampling_params(self, body: Any, prompt_len: int) -> Any:
        return SimpleNamespace(max_tokens=body.get("max_tokens", 8))


def fake_vllm_engine(
    fake: FakeAsyncLLM, *, interactive_slots: int = 0, preempt: bool = False
) -> VllmEngine:
    """promptq's engine wrapper around `fake`, with its real slots, deadlines and streams."""
    options = EngineOptions(
        model_path="fake",
        max_num_seqs=fake.vllm_config.scheduler_config.max_num_seqs,
        interactive_slots=interactive_slots,
        preempt=preempt,
    )
    return _NoVllm(fake, options)
