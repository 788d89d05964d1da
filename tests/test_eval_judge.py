"""The optional LLM judge against a local OpenAI-compatible stub server: request format, retries on 5xx,
no retry on 4xx, timeouts, and scoring with its extraction. No network beyond localhost."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vlm_jax.evaluate.examples import Example
from vlm_jax.evaluate.judge import JudgeConfig, JudgeError, chat_completion, judge_extractor
from vlm_jax.evaluate.scoring_math import score_mathvision


class StubServer:
    """Answers POST /v1/chat/completions with the next scripted (status, reply or delay) and records requests."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, reply = stub.script.pop(0)
                if status == "sleep":
                    time.sleep(reply)
                    status, reply = 200, "late"
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _config(url, **kw):
    return JudgeConfig(url=url, key="sk-test", model="judge-model", backoff_s=0.01, **kw)


def test_retries_server_errors_then_answers():
    stub = StubServer([(500, ""), (503, ""), (200, "B")])
    with stub as url:
        answer = chat_completion(_config(url), [{"role": "user", "content": "hi"}])
    assert answer == "B" and len(stub.requests) == 3


def test_request_format_and_extraction_scoring():
    example = Example(qid="2", image_path="i.jpg", question_text="Which kitten?", answers=("D",),
                      choices=("A", "B", "C", "D", "E"),
                      meta={"benchmark": "mathvision", "question_type": "multi_choice", "subject": "logic", "level": 3})
    stub = StubServer([(200, "D")])
    with stub as url:
        result = score_mathvision([example], {"2": "After long reasoning about ears and stripes ..."},
                                  extract=judge_extractor(_config(url)))
    assert result["accuracy"] == 100.0
    request = stub.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["model"] == "judge-model" and request["body"]["temperature"] == 0
    user = request["body"]["messages"][-1]["content"]
    assert "Which kitten?" in user and "After long reasoning" in user and "(D) D" in user


def test_client_errors_are_not_retried():
    stub = StubServer([(400, ""), (200, "never")])
    with stub as url, pytest.raises(JudgeError, match="HTTP 400"):
        chat_completion(_config(url), [{"role": "user", "content": "hi"}])
    assert len(stub.requests) == 1


def test_timeouts_exhaust_bounded_retries():
    stub = StubServer([("sleep", 1.0), ("sleep", 1.0)])
    with stub as url, pytest.raises(JudgeError, match="2 attempt"):
        chat_completion(_config(url, timeout_s=0.2, max_retries=1), [{"role": "user", "content": "hi"}])
    assert len(stub.requests) == 2


def test_config_from_env():
    with pytest.raises(JudgeError, match="VLM_JAX_JUDGE_URL"):
        JudgeConfig.from_env({})
    config = JudgeConfig.from_env({"VLM_JAX_JUDGE_URL": "http://h/v1/chat/completions", "VLM_JAX_JUDGE_KEY": "k"})
    assert config.endpoint == "http://h/v1/chat/completions" and config.model == "gpt-4o" and config.key == "k"
    assert JudgeConfig.from_env({"VLM_JAX_JUDGE_URL": "http://h/v1/", "VLM_JAX_JUDGE_MODEL": "m"}).endpoint == \
        "http://h/v1/chat/completions"
