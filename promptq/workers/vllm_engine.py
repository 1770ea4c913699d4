"""One long-lived vLLM async engine: chat-completions bodies in, Completions out, by priority."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from promptq.errors import RetryableError, TerminalError
from promptq.jobs import Deadline
from promptq.metrics import ENGINE_REQUESTS, PREEMPTED, PREEMPTED_TOKENS
from promptq.queues import BULK_BAND
from promptq.workers.completion import Completion, JobRequest
from promptq.workers.engine_slots import EngineSlots, Running

__all__ = ["DEFAULT_MAX_TOKENS", "EngineOptions", "VllmEngine"]

log = structlog.get_logger(__name__)

DEFAULT_MAX_TOKENS = 256
GIB = 1 << 30
# vLLM always streams the first token at once (that is our time to first token); after it,
# one message per 16 tokens keeps the per-request asyncio traffic small under load.
STREAM_INTERVAL = 16


@dataclass(frozen=True)
class EngineOptions:
    """How to start the engine: the model directory and the knobs vLLM exposes."""

    model_path: str  # a local HF-format directory
    max_model_len: int | None = None
    max_num_seqs: int = 32
    dtype: str = "auto"
    gpu_memory_utilization: float | None = None
    cpu_kvcache_gib: float | None = None  # KV cache size on vLLM's CPU backend
    seed: int = 0
    enforce_eager: bool = False
    # Running slots bulk requests may not take, so an interactive request starts at once:
    # vLLM preempts only under KV-cache pressure, never for priority alone.
    interactive_slots: int = 2
    # An interactive request that finds no free slot aborts the lowest-priority running bulk
    # request, which runs again first in line (same attempt, billed once).
    preempt: bool = True


@dataclass(frozen=True)
class _Generated:
    """What one streamed generation produced."""

    text: str
    token_count: int
    finish_reason: str
    ttft_ms: float | None
    cached_tokens: int | None


class _Preempted(Exception):
    """A bulk request was aborted for an interactive one after generating `tokens`."""

    def __init__(self, tokens: int) -> None:
        super().__init__(tokens)
        self.tokens = tokens


class VllmEngine:
    """A started vLLM AsyncLLM; `complete` runs one job attempt in its continuous batch."""

    def __init__(self, engine: Any, options: EngineOptions) -> None:
        self._engine = engine
        self._options = options
        self._tokenizer: Any = engine.get_tokenizer()
        self._max_model_len = int(engine.model_config.max_model_len)
        self._max_num_seqs = int(engine.vllm_config.scheduler_config.max_num_seqs)
        self._slots = EngineSlots(self._max_num_seqs, options.interactive_slots, options.preempt)

    @classmethod
    async def start(cls, options: EngineOptions) -> VllmEngine:
        """Load the model and start the engine process; blocks the running loop while it loads."""
        # Imported here so promptq imports (and its API runs) without vLLM installed.
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.monotonic()
        # Built inside the running loop on purpose: AsyncLLM starts its output-handler tasks
        # on the loop it is created in, so engine failures are seen before the first request.
        # Never bound to a local here: modules imported during the load keep this frame alive
        # (through tracebacks they store), and a local would keep the engine alive past aclose.
        handle = cls(AsyncLLM.from_engine_args(_engine_args(options)), options)
        log.info(
            "vllm_engine.started",
            model_path=options.model_path,
            max_model_len=handle.max_model_len,
            max_num_seqs=handle.max_num_seqs,
            seconds=round(time.monotonic() - started, 1),
        )
        return handle

    @property
    def max_num_seqs(self) -> int:
        """How many sequences the engine runs in one batch."""
        return self._max_num_seqs

    @property
    def bulk_slots(self) -> int:
        """How many bulk requests the engine runs at once (the rest wait their turn here)."""
        return self._slots.bulk_limit

    @property
    def max_model_len(self) -> int:
        """The longest prompt plus completion, in tokens, that the engine accepts."""
        return self._max_model_len

    async def complete(self, request: JobRequest) -> Completion:
        """Run one attempt of a chat-completions job; raises TerminalError or RetryableError."""
        if self._engine is None:
            raise RetryableError("engine_closed", "The vLLM engine was shut down.")
        prompt_ids = self._prompt_ids(request.body)
        params = self._sampling_params(request.body, len(prompt_ids))
        if request.priority < BULK_BAND:
            request_id = f"{request.job_id}-{request.attempt}"
            generated = await self._interactive(request, prompt_ids, params, request_id)
            preemptions = 0
        else:
            request_id, generated, preemptions = await self._bulk(request, prompt_ids, params)
        return Completion(
            content=generated.text,
            finish_reason=generated.finish_reason,
            prompt_tokens=len(prompt_ids),
            completion_tokens=generated.token_count,
            ttft_ms=generated.ttft_ms,
            request_id=request_id,
            extra={"cached_prompt_tokens": generated.cached_tokens, "preemptions": preemptions},
        )

    async def _interactive(
        self, request: JobRequest, prompt_ids: list[int], params: Any, request_id: str
    ) -> _Generated:
        """Run an interactive request at once: in a kept-free slot, else in one a bulk
        request is aborted for."""
        victim = self._slots.enter_interactive(request.job_id)
        try:
            if victim is not None:
                await self._preempt(victim)
            return await self._generate(
                prompt_ids, params, request_id, request, deadline=request.deadline
            )
        finally:
            self._slots.exit_interactive()

    async def _preempt(self, victim: Running) -> None:
        """Abort `victim` before submitting the interactive request, so that vLLM's next step
        has its slot free; the victim's own stream then ends and it queues again."""
        await self._abort(victim.request_id)

    async def _abort(self, request_id: str) -> None:
        try:
            await self._engine.abort(request_id)
        except Exception:  # a dead engine fails the next request itself
            log.warning("vllm_engine.abort_failed", request_id=request_id, exc_info=True)

    async def _bulk(
        self, request: JobRequest, prompt_ids: list[int], params: Any
    ) -> tuple[str, _Generated, int]:
        """Run a bulk request in a bulk slot, again (first in line, same attempt) each time
        it is preempted; returns the request id that finished and the preemption count."""
        preemptions = 0
        while True:
            suffix = f"-p{preemptions}" if preemptions else ""
            running = Running(f"{request.job_id}-{request.attempt}{suffix}", request.priority)
            # Its deadline bounds the wait for its first run only: a preempted request had
            # started, and runs again first in line whatever its deadline.
            deadline = None if preemptions else request.deadline
            acquired = self._slots.acquire(running, first=preemptions > 0)
            if deadline is None:
                await acquired
            else:
                await deadline.within(acquired, "engine_slot")
            try:
                generated = await self._generate(
                    prompt_ids, params, running.request_id, request, running, deadline
                )
            except _Preempted as preempted:
                self._slots.release(running, wake=False)  # its next run asks first, below
                preemptions += 1
                _count_preemption(request, running, preempted.tokens)
                continue
            except BaseException:
                self._slots.release(running)
                raise
            self._slots.release(running)
            return running.request_id, generated, preemptions

    async def aclose(self) -> None:
        """Stop the engine process; safe to call twice."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
            # Dropped here, not at interpreter exit, where AsyncLLM.__del__ fails noisily
            # because the modules its shutdown uses are already gone.
            del engine
            log.info("vllm_engine.stopped", model_path=self._options.model_path)

    def _prompt_ids(self, body: Mapping[str, Any]) -> list[int]:
        """Render the messages with the model's chat template and check that they fit."""
        messages = _chat_messages(body)
        try:
            text = self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # the template is model code: any failure means bad input
            raise _bad_request(
                "invalid_request", f"The model's chat template rejected the messages: {exc}"
            ) from exc
        # The template already wrote the special tokens the model expects.
        ids = [int(token) for token in self._tokenizer.encode(str(text), add_special_tokens=False)]
        if len(ids) + 1 > self._max_model_len:
            raise _bad_request(
                "context_length_exceeded",
                f"This model's maximum context length is {self._max_model_len} tokens; "
                f"the prompt has {len(ids)} tokens.",
            )
        return ids

    def _engine_prompt(self, prompt_ids: list[int]) -> Any:
        """The token ids as vLLM's prompt input."""
        from vllm.inputs import tokens_input

        return tokens_input(prompt_ids)

    def _sampling_params(self, body: Mapping[str, Any], prompt_len: int) -> Any:
        """Map the OpenAI sampling fields onto vLLM's SamplingParams."""
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind

        options = _sampling_options(body, self._max_model_len - prompt_len)
        try:
            return SamplingParams(
                **options, output_kind=RequestOutputKind.DELTA, stream_interval=STREAM_INTERVAL
            )
        except (VLLMClientError, ValueError, TypeError) as exc:
            raise _bad_request("invalid_request", f"Invalid sampling parameters: {exc}") from exc

    async def _generate(
        self,
        prompt_ids: list[int],
        params: Any,
        request_id: str,
        request: JobRequest,
        running: Running | None = None,
        deadline: Deadline | None = None,
    ) -> _Generated:
        """Stream one request through the engine, timing its first token; the request
        counts as waiting in promptq_engine_requests until then, running after. A bulk
        request's `running` record follows its token count; raises _Preempted when it was
        aborted for an interactive request. A request with no token by its `deadline` is
        aborted (DeadlineExceeded); one generating by then finishes."""
        # No token yet by the deadline: still waiting in vLLM's queue (or prefilling).
        limit = asyncio.timeout(None if deadline is None else deadline.check("engine_slot"))
        prompt = self._engine_prompt(prompt_ids)
        started = time.monotonic()
        parts: list[str] = []
        token_count = 0
        ttft_ms: float | None = None
        finish: str | None = None
        cached: int | None = None
        stream = self._engine.generate(prompt, params, request_id, priority=request.priority)
        state = ENGINE_REQUESTS.labels(request.model, "waiting")
        state.inc()
        try:
            async with limit:
                async for output in stream:
                    choice = output.outputs[0]
                    if ttft_ms is None and choice.token_ids:
                        ttft_ms = (time.monotonic() - started) * 1000
                        limit.reschedule(None)  # generating: it finishes
                        state.dec()
                        state = ENGINE_REQUESTS.labels(request.model, "running")
                        state.inc()
                    parts.append(choice.text)
                    token_count += len(choice.token_ids)
                    finish, cached = choice.finish_reason, output.num_cached_tokens
                    if running is not None:
                        running.tokens = token_count
        except Exception as exc:
            if deadline is not None and limit.expired():
                await self._abort(request_id)
                raise deadline.expired("engine_slot") from None
            raise _job_error(exc) from exc
        finally:
            state.dec()
        if finish in (None, "abort") and running is not None and running.preempted:
            raise _Preempted(token_count)
        if finish in (None, "abort", "error"):
            raise RetryableError("engine_error", f"The engine ended the request ({finish}).")
        return _Generated("".join(parts), token_count, str(finish), ttft_ms, cached)


def _count_preemption(request: JobRequest, running: Running, tokens: int) -> None:
    PREEMPTED.labels(request.model).inc()
    PREEMPTED_TOKENS.labels(request.model).inc(tokens)
    log.info(
        "job.preempted",
        job_id=request.job_id,
        attempt=request.attempt,
        model=request.model,
        priority=request.priority,
        wasted_tokens=tokens,
        preempted_for=running.preempted_for,
    )


def _engine_args(options: EngineOptions) -> Any:
    """AsyncEngineArgs for `options`, with vLLM's priority scheduler."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform

    # A plain dict: vLLM types dtype as a Literal, and promptq takes it from the models file.
    kwargs: dict[str, Any] = {
        "model": options.model_path,
        "max_num_seqs": options.max_num_seqs,
        "dtype": options.dtype,
        "seed": options.seed,
        "enforce_eager": options.enforce_eager,
        "scheduling_policy": "priority",
        "disable_log_stats": True,  # promptq records its own usage per job
    }
    if options.max_model_len is not None:
        kwargs["max_model_len"] = options.max_model_len
    if options.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
    if options.cpu_kvcache_gib is not None and current_platform.is_cpu():
        # What VLLM_CPU_KVCACHE_SPACE sets, without mutating the process environment and
        # without that variable's whole-GiB parsing. An operator's VLLM_CPU_KVCACHE_SPACE wins.
        kwargs["kv_cache_memory_bytes"] = int(options.cpu_kvcache_gib * GIB)
    return AsyncEngineArgs(**kwargs)


def _job_error(exc: Exception) -> Exception:
    """Translate an error raised by the engine's stream into promptq's retry vocabulary."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, EngineDeadError):
        return RetryableError("engine_dead", "The vLLM engine process died; restart the worker.")
    if isinstance(exc, VLLMClientError):
        return _bad_request("invalid_request", f"The engine rejected the request: {exc}")
    if isinstance(exc, GracefulHTTPError):
        return RetryableError("engine_busy", exc.message, int(exc.http_status))
    return RetryableError("engine_error", f"The engine failed the request: {exc!r}")


def _chat_messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    """The body's messages with text-only content, as chat templates expect."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad_request("invalid_request", "'messages' must be a non-empty list.")
    rendered: list[dict[str, str]] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _bad_request("invalid_request", "Each message needs a string 'role'.")
        rendered.append({"role": message["role"], "content": _text_content(message)})
    return rendered


def _text_content(message: Mapping[str, Any]) -> str:
    """A message's content as one string; OpenAI's text parts are joined."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    raise _bad_request("unsupported_content", "This model takes text content only.")


def _sampling_options(body: Mapping[str, Any], room: int) -> dict[str, Any]:
    """SamplingParams keyword arguments from an OpenAI body; `room` is what fits after the
    prompt."""
    n = body.get("n")
    if n not in (None, 1):
        raise _bad_request("unsupported_parameter", "Only n=1 is supported.")
    stop = body.get("stop")
    if not (stop is None or isinstance(stop, str) or _is_str_list(stop)):
        raise _bad_request("invalid_request", "'stop' must be a string or a list of strings.")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad_request("invalid_request", "'seed' must be an integer.")
    return {
        "temperature": _number(body, "temperature", 1.0),
        "top_p": _number(body, "top_p", 1.0),
        "presence_penalty": _number(body, "presence_penalty", 0.0),
        "frequency_penalty": _number(body, "frequency_penalty", 0.0),
        "max_tokens": min(_max_tokens(body), room),
        "stop": stop,
        "seed": seed,
    }


def _max_tokens(body: Mapping[str, Any]) -> int:
    """max_completion_tokens (OpenAI's current name) or max_tokens, else the default."""
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
    if value is None:
        return DEFAULT_MAX_TOKENS
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad_request("invalid_request", "'max_tokens' must be a positive integer.")
    return value


def _number(body: Mapping[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad_request("invalid_request", f"{key!r} must be a number.")
    return float(value)


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _bad_request(code: str, message: str) -> TerminalError:
    """A request the engine cannot run, answered as an OpenAI-compatible server would: 400."""
    return TerminalError(code, message, 400)
