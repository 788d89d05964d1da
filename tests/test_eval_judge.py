"""The math LLM judge against a local OpenAI-compatible chat-completions server on 127.0.0.1: the original's
judge messages (system prompt, seven in-context cases, `make_prompt` of raw generation / labelled answer /
choices) written out by hand, verdict parsing, failures counted wrong, retries on 5xx, no retry on 4xx,
timeouts, the extraction mode, and the score CLI choosing the judge from VLM_JAX_JUDGE_URL. No network beyond
localhost."""
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from eval_shared_data import shared_data_dir

from vlm_jax.evaluate.__main__ import main
from vlm_jax.evaluate.examples import Example
from vlm_jax.evaluate.judge import JudgeConfig, JudgeError, MathJudge, chat_completion, parse_judgement
from vlm_jax.evaluate.visual_math import load_mathvista, score_mathverse, score_mathvision, score_mathvista

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATHVISTA = str(shared_data_dir() / "mathvista_test_mini.json")
SYSTEM = ("You are a mathematics teacher. You need to help me determine whether the answer predicted by the model "
          "is correct. The mathematics questions may be multiple-choice questions or essay questions. You need to "
          "judge whether the predicted answer is correct based on the given labeled answers and options. Finally, "
          "you need to output ###Judge: True or ###Judge: False")
CASES = [
    "Predicted Answer: [0, 2]. Choice: ['[0, 2]', '[3, 2]', '[2, 4]', '[-3, 4]']. Labeled Answer: [0, 2]. Please "
    "output you judgement.",
    "Predicted Answer: D. Choice: ['[0, 2]', '[3, 2]', '[2, 4]', '[-3, 4]']. Labeled Answer: [-3, 4]. Please output "
    "you judgement.",
    "Predicted Answer: Yes. Choice: ['Yes', 'No']. Labeled Answer: No. Please output you judgement.",
    "Predicted Answer: 36°. Choice: None. Labeled Answer: 27°. Please output you judgement.",
    "Predicted Answer: B. Choice: ['steelheads would decrease.', 'stickleback fry would increase.', 'predatory "
    "insects would increase.', 'predatory insects would decrease.']. Labeled Answer: predatory insects would "
    "decrease.. Please output you judgement.",
    "query: Predicted Answer: quarter past. Choice: ['half', 'quarter', 'clock', 'quarter to', 'quarter past']. "
    "Labeled Answer: quarter. Please output you judgement.",
    "query: Predicted Answer: A. Choice: ['white five', 'white three', 'white four', 'white one', 'white two']. "
    "Labeled Answer: white one. Please output you judgement.",
]
REPLIES = ["###judge: True", "###judge: True", "###judge: False", "###judge: False", "###judge: False",
           "###judge: False", "###judge: False"]


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


def expected_messages(last):
    messages = [{"role": "system", "content": SYSTEM}]
    for case, reply in zip(CASES, REPLIES):
        messages += [{"role": "user", "content": case}, {"role": "assistant", "content": reply}]
    return messages + [{"role": "user", "content": last}]


def test_original_judge_messages_and_verdicts():
    mathvista = {e.qid: e for e in load_mathvista(MATHVISTA)}
    # pid 3: multiple choice (answer "145°" = option C), pid 1: free-form float 1.2 (choices null)
    stub = StubServer([(200, "###Judge: True"), (200, "I think ###judge: false"), (200, "no verdict"), (500, ""),
                       (500, ""), (500, ""), (500, "")])
    with stub as url:
        judge = MathJudge(_config(url), "judge")
        result = score_mathvista([mathvista["3"], mathvista["1"]], {"3": "The answer is C", "1": "1.2 m"},
                                 judge=judge)
        assert [r["score"] for r in result.records] == [1.0, 0.0]
        assert result.summary["accuracy"] == 50.0 and result.summary["scorer"] == "llm_judge:judge-model"
        assert result.summary["judge_errors"] == 0
        bodies = [r["body"] for r in stub.requests]
        assert bodies[0]["messages"] == expected_messages(
            "Predicted Answer: The answer is C. Choice: ['135°', '140°', '145°', '150°']. Labeled Answer: 145°. "
            "Please output you judgement.")
        assert bodies[1]["messages"][-1]["content"] == (
            "Predicted Answer: 1.2 m. Choice: None. Labeled Answer: 1.2. Please output you judgement.")
        assert bodies[0]["temperature"] == 0.2 and bodies[0]["max_tokens"] == 100
        assert bodies[0]["model"] == "judge-model"
        # a reply without a verdict, and a request that fails every retry: wrong, counted as judge errors
        result = score_mathvista([mathvista["3"], mathvista["1"]], {"3": "C", "1": "1.2"}, judge=judge)
        assert [r["score"] for r in result.records] == [0.0, 0.0] and result.summary["judge_errors"] == 2
        assert [r["extracted"] for r in result.records] == ["Error", "Error"]


def test_judge_prompts_of_mathvision_and_mathverse():
    mathvision = Example(qid="2", image_path="i.jpg", question_text="Which kitten?", answers=("D",),
                         choices=("A", "B", "C", "D", "E"),
                         meta={"benchmark": "mathvision", "question_type": "multi_choice", "subject": "logic",
                               "level": 3, "raw_answer": "D", "raw_choices": ["A", "B", "C", "D", "E"]})
    free = Example(qid="3", image_path="i.jpg", question_text="How many?", answers=("6",),
                   meta={"benchmark": "mathvision", "question_type": "free_form", "subject": "counting",
                         "level": 1, "raw_answer": "6", "raw_choices": []})
    mathverse = Example(qid="9", image_path="i.jpg", question_text="x?", answers=("5",),
                        meta={"benchmark": "mathverse", "question_type": "free_form", "problem_version": "Text Lite",
                              "subject": "algebra", "raw_answer": "5"})
    stub = StubServer([(200, "###judge: True")] * 3)
    with stub as url:
        judge = MathJudge(_config(url), "judge")
        assert score_mathvision([mathvision, free], {"2": "(D)", "3": "six"}, judge=judge).summary["accuracy"] == 100
        assert score_mathverse([mathverse], {"9": "x = 5"}, judge=judge).summary["accuracy"] == 100
    last = [r["body"]["messages"][-1]["content"] for r in stub.requests]
    assert last == ["Predicted Answer: (D). Choice: ['A', 'B', 'C', 'D', 'E']. Labeled Answer: D. Please output "
                    "you judgement.",
                    "Predicted Answer: six. Choice: []. Labeled Answer: 6. Please output you judgement.",
                    "Predicted Answer: x = 5.  Labeled Answer: 5. Please output you judgement."]


def test_parse_judgement():
    assert parse_judgement("###judge: True") is True and parse_judgement("###JUDGE: false") is False
    assert parse_judgement("###Judge:True") is None and parse_judgement("True") is None


def test_extraction_mode_and_all_failed_judge():
    example = Example(qid="2", image_path="i.jpg", question_text="Which kitten?", answers=("D",),
                      choices=("A", "B", "C", "D", "E"),
                      meta={"benchmark": "mathvision", "question_type": "multi_choice", "subject": "logic", "level": 3,
                            "raw_answer": "D", "raw_choices": []})
    stub = StubServer([(200, "D")])
    with stub as url:
        result = score_mathvision([example], {"2": "After long reasoning about ears and stripes ..."},
                                  judge=MathJudge(_config(url), "extract"))
    assert result.summary["accuracy"] == 100.0 and result.summary["scorer"] == "llm_extract:judge-model"
    request = stub.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["temperature"] == 0
    user = request["body"]["messages"][-1]["content"]
    assert "Which kitten?" in user and "After long reasoning" in user and "(D) D" in user
    stub = StubServer([(400, "")])
    with stub as url, pytest.raises(JudgeError, match="failed on all 1"):
        score_mathvision([example], {"2": "D"}, judge=MathJudge(_config(url, max_retries=0), "judge"))


def test_score_cli_uses_the_judge_when_configured(tmp_path, capsys, monkeypatch):
    rows = [{"pid": "3", "answer": "C"}, {"pid": "1", "answer": "1.2"}]
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"question_id": r["pid"], "answer": r["answer"]}) + "\n" for r in rows))
    subset = [r for r in json.loads(open(MATHVISTA).read()) if r["pid"] in ("1", "3")]
    (tmp_path / "mini.json").write_text(json.dumps(subset))
    args = ["score", "--config", f"{REPO}/configs/eval/mathvista.py", "--predictions", str(preds),
            f"--config.eval_split.path={tmp_path / 'mini.json'}"]
    monkeypatch.delenv("VLM_JAX_JUDGE_URL", raising=False)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["scorer"] == "rules"
    assert main(args + ["--config.scorer=judge"]) == 1
    assert "VLM_JAX_JUDGE_URL" in capsys.readouterr().err
    stub = StubServer([(200, "###judge: False"), (200, "###judge: True")])
    with stub as url:
        monkeypatch.setenv("VLM_JAX_JUDGE_URL", url)
        monkeypatch.setenv("VLM_JAX_JUDGE_MODEL", "local-judge")
        assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scorer"] == "llm_judge:local-judge" and result["accuracy"] == 50.0 and len(stub.requests) == 2


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
