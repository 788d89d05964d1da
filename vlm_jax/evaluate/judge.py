"""Optional LLM answer extraction through any OpenAI-compatible chat-completions endpoint, as the seeds
extract math answers with GPT-4o. Never needed by default; the rule-based extractor scores its output.

Configured from the environment:
  VLM_JAX_JUDGE_URL    base URL of the API (`https://api.openai.com/v1`) or the full `.../chat/completions` URL
  VLM_JAX_JUDGE_KEY    bearer token (may be empty for local servers)
  VLM_JAX_JUDGE_MODEL  model name (default "gpt-4o")
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import urllib.error
import urllib.request
from typing import Mapping

from vlm_jax.evaluate.examples import OPTION_LETTERS, Example

_RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)
EXTRACTION_INSTRUCTION = (
    "You extract the final answer from a model's response to a math question. Reply with the answer only: "
    "for a multiple-choice question the option letter, for a numeric question the number without units, "
    "for a list the list in Python syntax, otherwise the short answer text. If the response gives no answer, "
    "reply with an empty line.")


class JudgeError(RuntimeError):
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


def chat_completion(config: JudgeConfig, messages: list[dict[str, str]]) -> str:
    """The assistant message content for `messages` (temperature 0). Connection errors, timeouts and HTTP
    408/409/429/5xx are retried up to max_retries times with exponential backoff; then JudgeError."""
    body = json.dumps({"model": config.model, "messages": messages, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    if config.key:
        headers["Authorization"] = f"Bearer {config.key}"
    last_error = ""
    for attempt in range(config.max_retries + 1):
        if attempt:
            time.sleep(config.backoff_s * 2 ** (attempt - 1))
        request = urllib.request.Request(config.endpoint, data=body, headers=headers, method="POST")
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


def extraction_messages(example: Example, generation: str) -> list[dict[str, str]]:
    """The chat messages asking the judge to extract the answer of `generation` to `example`'s question."""
    question = example.meta.get("query") or example.question_text
    if example.choices:
        question += "\nOptions: " + " ".join(f"({OPTION_LETTERS[i]}) {c}" for i, c in enumerate(example.choices))
    return [{"role": "system", "content": EXTRACTION_INSTRUCTION},
            {"role": "user", "content": f"Question:\n{question}\n\nModel response:\n{generation}\n\nExtracted answer:"}]


def judge_extractor(config: JudgeConfig):
    """An `extract(example, generation) -> answer` step for the math scorers that asks the judge."""
    def extract(example: Example, generation: str) -> str:
        return chat_completion(config, extraction_messages(example, generation)).strip()
    return extract
