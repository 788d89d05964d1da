"""The math benchmarks' LLM judge through any OpenAI-compatible chat-completions endpoint.

Mode "judge" (the original's protocol, `llava/eval/eval_math{vista,vision,verse}.py`): the judge reads the RAW
generation, the labelled answer and (MathVista, MATH-Vision) the choices, with the original's system prompt and
its seven in-context cases, and answers `###judge: True` / `###judge: False`; temperature 0.2, at most 100
tokens. A reply without a judgement, or a failed request, counts the question wrong (as the original's bare
`except`), and is counted in `judge_errors`. Mode "extract" (vlm_jax's former option) asks for the answer only
and compares it by the rules.

Configured from the environment:
  VLM_JAX_JUDGE_URL    base URL of the API (`https://api.openai.com/v1`) or the full `.../chat/completions` URL
  VLM_JAX_JUDGE_KEY    bearer token (may be empty for local servers)
  VLM_JAX_JUDGE_MODEL  model name (default "gpt-4o"; the original used gpt4o-0513 for MathVista and MathVerse,
                       gpt4o-mini for MATH-Vision, or deepseek-chat)
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import urllib.error
import urllib.request
from typing import Mapping

from vlm_jax import cli
from vlm_jax.evaluate.examples import OPTION_LETTERS, Example

_RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)
JUDGE_ERROR = "Error"
JUDGE_SYSTEM = ("You are a mathematics teacher. You need to help me determine whether the answer predicted by the "
                "model is correct. The mathematics questions may be multiple-choice questions or essay questions. "
                "You need to judge whether the predicted answer is correct based on the given labeled answers and "
                "options. Finally, you need to output ###Judge: True or ###Judge: False")
# The original's in-context cases, verbatim (including its "query: " prefix on cases 6 and 7).
JUDGE_CASES = (
    ("Predicted Answer: [0, 2]. Choice: ['[0, 2]', '[3, 2]', '[2, 4]', '[-3, 4]']. Labeled Answer: [0, 2]. "
     "Please output you judgement.", "###judge: True"),
    ("Predicted Answer: D. Choice: ['[0, 2]', '[3, 2]', '[2, 4]', '[-3, 4]']. Labeled Answer: [-3, 4]. "
     "Please output you judgement.", "###judge: True"),
    ("Predicted Answer: Yes. Choice: ['Yes', 'No']. Labeled Answer: No. Please output you judgement.",
     "###judge: False"),
    ("Predicted Answer: 36°. Choice: None. Labeled Answer: 27°. Please output you judgement.", "###judge: False"),
    ("Predicted Answer: B. Choice: ['steelheads would decrease.', 'stickleback fry would increase.', "
     "'predatory insects would increase.', 'predatory insects would decrease.']. Labeled Answer: predatory "
     "insects would decrease.. Please output you judgement.", "###judge: False"),
    ("query: Predicted Answer: quarter past. Choice: ['half', 'quarter', 'clock', 'quarter to', 'quarter past']. "
     "Labeled Answer: quarter. Please output you judgement.", "###judge: False"),
    ("query: Predicted Answer: A. Choice: ['white five', 'white three', 'white four', 'white one', 'white two']. "
     "Labeled Answer: white one. Please output you judgement.", "###judge: False"),
)
_JUDGEMENT = re.compile(r"###judge: (True|False)", re.IGNORECASE)
EXTRACTION_INSTRUCTION = (
    "You extract the final answer from a model's response to a math question. Reply with the answer only: "
    "for a multiple-choice question the option letter, for a numeric question the number without units, "
    "for a list the list in Python syntax, otherwise the short answer text. If the response gives no answer, "
    "reply with an empty line.")
JUDGE_MODES = ("judge", "extract")


class JudgeError(cli.InputError, RuntimeError):
    """The judge endpoint is not configured, or did not answer after the allowed retries."""


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    url: str
    key: str = ""
    model: str = "gpt-4o"
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 2.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "JudgeConfig":
        """The judge settings from VLM_JAX_JUDGE_URL / _KEY / _MODEL; a missing URL is a JudgeError."""
        url = environ.get("VLM_JAX_JUDGE_URL", "")
        if not url:
            raise JudgeError("the judge needs VLM_JAX_JUDGE_URL (and usually VLM_JAX_JUDGE_KEY, VLM_JAX_JUDGE_MODEL)")
        return cls(url=url, key=environ.get("VLM_JAX_JUDGE_KEY", ""),
                   model=environ.get("VLM_JAX_JUDGE_MODEL", "") or cls.model)

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"


@dataclasses.dataclass(frozen=True)
class MathJudge:
    """How the math scorers use the LLM: `mode` "judge" (original) or "extract"."""

    config: JudgeConfig
    mode: str = "judge"


def chat_completion(config: JudgeConfig, messages: list[dict[str, str]], *, temperature: float = 0.0,
                    max_tokens: int | None = None) -> str:
    """The assistant message content for `messages`. Connection errors, timeouts and HTTP 408/409/429/5xx are
    retried up to max_retries times with exponential backoff; then JudgeError."""
    body = {"model": config.model, "messages": messages, "temperature": temperature}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if config.key:
        headers["Authorization"] = f"Bearer {config.key}"
    last_error = ""
    for attempt in range(config.max_retries + 1):
        if attempt:
            time.sleep(config.backoff_s * 2 ** (attempt - 1))
        request = urllib.request.Request(config.endpoint, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
                payload = json.load(response)
            return payload["choices"][0]["message"]["content"] or ""
        except urllib.error.HTTPError as e:
            last_error = f"HTTP {e.code}"
            if e.code not in _RETRY_STATUS:
                break
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            last_error = f"{type(e).__name__}: {e}"
        except (KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
            raise JudgeError(f"{config.endpoint}: unexpected response ({e!r})") from e
    raise JudgeError(f"{config.endpoint}: no answer after {attempt + 1} attempt(s), last error {last_error}")


def judge_prompt(example: Example, generation: str) -> str:
    """The original's `make_prompt`: `str()` of the raw generation, the labelled answer and the choices
    (MathVista `choices`, None for free-form; MATH-Vision `options`, [] for free-form; MathVerse: none, and
    its own spacing)."""
    labelled = example.meta.get("raw_answer", example.answers[0])
    if example.benchmark == "mathverse":
        return f"Predicted Answer: {generation}.  Labeled Answer: {labelled}. Please output you judgement."
    choice = example.meta.get("raw_choices")
    return (f"Predicted Answer: {generation}. Choice: {choice}. Labeled Answer: {labelled}. "
            "Please output you judgement.")


def judge_messages(example: Example, generation: str) -> list[dict[str, str]]:
    """System prompt, the seven in-context cases as user/assistant turns, then this question."""
    messages = [{"role": "system", "content": JUDGE_SYSTEM}]
    for case, reply in JUDGE_CASES:
        messages += [{"role": "user", "content": case}, {"role": "assistant", "content": reply}]
    messages.append({"role": "user", "content": judge_prompt(example, generation)})
    return messages


def parse_judgement(output: str) -> bool | None:
    """True / False from the first `###judge: True|False` (case-insensitive), None when there is none."""
    m = _JUDGEMENT.search(output)
    return None if m is None else m.group(1).lower() == "true"


def judge_correct(judge: MathJudge, example: Example, generation: str) -> tuple[bool, str, bool]:
    """(correct, the judge's reply or JUDGE_ERROR, whether the request itself failed): a failed request or a
    reply without a judgement is wrong, as the original's `except` makes it."""
    try:
        output = chat_completion(judge.config, judge_messages(example, generation), temperature=0.2, max_tokens=100)
    except JudgeError:
        return False, JUDGE_ERROR, True
    verdict = parse_judgement(output)
    return (False, JUDGE_ERROR, False) if verdict is None else (verdict, output, False)


def extraction_messages(example: Example, generation: str) -> list[dict[str, str]]:
    """The chat messages asking the LLM to extract the answer of `generation` to `example`'s question."""
    question = example.meta.get("query") or example.question_text
    if example.choices:
        question += "\nOptions: " + " ".join(f"({OPTION_LETTERS[i]}) {c}" for i, c in enumerate(example.choices))
    return [{"role": "system", "content": EXTRACTION_INSTRUCTION},
            {"role": "user", "content": f"Question:\n{question}\n\nModel response:\n{generation}\n\nExtracted answer:"}]


def extract_answer(judge: MathJudge, example: Example, generation: str) -> str:
    """The LLM's extraction of the answer in `generation` (mode "extract")."""
    return chat_completion(judge.config, extraction_messages(example, generation)).strip()


def math_judge(scorer: str, benchmark_judged: bool, environ: Mapping[str, str] = os.environ) -> MathJudge | None:
    """The judge a `scorer` setting asks for: "auto" → the original's judge when VLM_JAX_JUDGE_URL is set and
    the benchmark is judged, else None (rules); "judge" / "extract" → that mode (a missing URL is an error);
    "rules" → None."""
    if scorer == "rules" or not benchmark_judged:
        if scorer in JUDGE_MODES and not benchmark_judged:
            raise ValueError(f"scorer={scorer!r} applies to the math benchmarks only")
        return None
    if scorer == "auto":
        return MathJudge(JudgeConfig.from_env(environ), "judge") if environ.get("VLM_JAX_JUDGE_URL") else None
    if scorer not in JUDGE_MODES:
        raise ValueError(f"scorer={scorer!r}: expected one of auto, rules, {', '.join(JUDGE_MODES)}")
    return MathJudge(JudgeConfig.from_env(environ), scorer)
