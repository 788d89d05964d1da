"""Held-out multiple-choice accuracy: rank candidate answers by their log-likelihood under the model.

The file is JSONL, one question per line:
    {"image": "images/q0001.png", "prompt": "What is in the image? Answer:", "choices": ["cat", "horse", ...],
     "answer": "cat"}
(`image` relative to the file's directory). Each choice is scored as the summed log-probability of
the tokens of `" " + choice` after `[BOS] <image block> prompt` (the layout the seed's rule gives
`"<image> prompt choice"`); the question counts as right when the answer scores highest.
Honest and cheap: no generation, no string matching, one forward pass per (question, choice).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from vlm_jax import cli
from vlm_jax.inference.model import IMAGE_PLACEHOLDER, VLM


@dataclasses.dataclass(frozen=True)
class Question:
    image: str
    prompt: str
    choices: tuple[str, ...]
    answer: str


def read_questions(path: str) -> list[Question]:
    """Questions of a held-out JSONL file; ValueError names the line and field that is wrong."""
    base = os.path.dirname(os.path.abspath(path))
    questions = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise cli.InputError(f"{where}: not JSON ({err.msg})") from err
            for field in ("image", "prompt", "choices", "answer"):
                if field not in raw:
                    raise cli.InputError(f"{where}: no field {field!r}")
            if raw["answer"] not in raw["choices"]:
                raise cli.InputError(f"{where}: answer {raw['answer']!r} is not among the choices")
            questions.append(Question(os.path.join(base, raw["image"]), raw["prompt"], tuple(raw["choices"]),
                                      raw["answer"]))
    if not questions:
        raise cli.InputError(f"{path}: no questions")
    return questions


def choice_rows(questions: Sequence[Question], vlm: VLM) -> dict[str, np.ndarray]:
    """One row per (question, choice) in the DESIGN.md batch layout, `loss_mask` on the choice tokens; the
    prompt `<image> PROMPT` and the image go through the inference handle's `prompt_ids` / `image_inputs` (the
    same path as generation, for either model family).

    Returns input_ids/targets/positions/segment_ids int32 `[rows, seq]`, loss_mask float32
    `[rows, seq]`, pixel_values float32 `[rows, 1, H, W, 3]`, image_mask bool `[rows, 1]` (+ Idefics2:
    pixel_attention_mask bool `[rows, 1, H, W]`, every question's image padded to the largest).
    """
    try:
        images = vlm.image_inputs([[q.image] for q in questions])
    except cli.InputError as e:
        raise cli.InputError(f"held-out {e}") from e
    # LLaVA's prompt pieces are tokenized one by one (the choice as a new piece after the prompt); Idefics2's
    # processor tokenizes the whole string, in which the choice continues the prompt's text.
    encode = vlm.tokenizer.encode_continuation if vlm.idefics2 else vlm.tokenizer.encode
    prefix_rows, choice_ids, of_question = [], [], []
    for i, q in enumerate(questions):
        prefix = vlm.prompt_ids(IMAGE_PLACEHOLDER + q.prompt, 1)
        for choice in q.choices:
            prefix_rows.append(prefix)
            choice_ids.append(encode(" " + choice))
            of_question.append(i)
    seq = max(len(p) + len(c) for p, c in zip(prefix_rows, choice_ids))
    seq = -(-seq // 8) * 8
    rows = len(prefix_rows)
    out = {k: np.zeros((rows, seq), np.int32) for k in ("input_ids", "targets", "positions", "segment_ids")}
    out["loss_mask"] = np.zeros((rows, seq), np.float32)
    for r, (prefix, choice) in enumerate(zip(prefix_rows, choice_ids)):
        ids = prefix + choice
        n = len(ids)
        out["input_ids"][r, :n] = ids
        out["targets"][r, : n - 1] = ids[1:]
        out["loss_mask"][r, len(prefix) - 1: n - 1] = 1.0  # positions that predict the choice tokens
        out["positions"][r, :n] = np.arange(n)
        out["segment_ids"][r, :n] = 1
    out.update({k: v[np.asarray(of_question)] for k, v in images.items()})
    return out


def accuracy(questions: Sequence[Question], rows: Mapping[str, np.ndarray],
             row_nll: Callable[[dict[str, np.ndarray]], np.ndarray], batch_size: int, multiple: int
             ) -> dict[str, float]:
    """Scores `rows` in chunks of `batch_size` (padded to a multiple of `multiple` with masked rows)
    with `row_nll` (a `[b, ...]` batch -> summed masked NLL `[b]`).

    Returns accuracy (fraction of questions whose answer has the lowest NLL) and answer_nll (mean
    NLL of the right answer, in nats; lower is better).
    """
    total = len(next(iter(rows.values())))
    batch_size = max(multiple, batch_size // multiple * multiple)
    nll = []
    for start in range(0, total, batch_size):
        chunk = {k: v[start:start + batch_size] for k, v in rows.items()}
        n = len(chunk["input_ids"])
        if n < batch_size:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - n, axis=0)]) for k, v in chunk.items()}
            chunk["loss_mask"][n:] = 0.0
        nll.append(np.asarray(jax.device_get(row_nll(chunk)))[:n])
    nll = np.concatenate(nll)
    correct, answer_nll, r = 0, 0.0, 0
    for q in questions:
        scores = nll[r:r + len(q.choices)]
        r += len(q.choices)
        right = q.choices.index(q.answer)
        correct += int(np.argmin(scores) == right)
        answer_nll += float(scores[right])
    return {"accuracy": correct / len(questions), "answer_nll": answer_nll / len(questions),
            "questions": len(questions), "chance": float(np.mean([1 / len(q.choices) for q in questions]))}
