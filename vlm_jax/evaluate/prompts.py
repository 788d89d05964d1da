"""Few-shot prompts in LLaVA-1.5's `llava_v1` conversation template (Vicuna v1 separators).

A prompt is the system line, then one USER/ASSISTANT turn per demonstration, then the query turn with the
assistant's reply left open:

    {system} USER: <image>\\n{demo question} ASSISTANT: {demo answer}</s>USER: <image>\\n{question} ASSISTANT:

exactly what LLaVA's `Conversation.get_prompt()` (SeparatorStyle.TWO, sep " ", sep2 "</s>") produces for the
messages the Multimodal-Textbook few-shot loaders append. Each turn's text comes from `turn_text`, which
dispatches on the example's own benchmark (a MathVista query can have MathVision demonstrations).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from vlm_jax.evaluate.examples import OPTION_LETTERS, Example

SYSTEM_PROMPT = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
ROLES = ("USER", "ASSISTANT")
SEP, SEP2 = " ", "</s>"
IMAGE_PLACEHOLDER = "<image>"
VQA_INSTRUCTION = "Answer the question using a single word or phrase."
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
_INLINE_IMAGE_TAG = re.compile(r"[ \t]*<image\d+>[ \t]*")


@dataclasses.dataclass(frozen=True)
class Prompt:
    """Prompt text with one IMAGE_PLACEHOLDER per image, and the image files in placeholder order."""

    text: str
    image_paths: tuple[str, ...]


def _vqa_turn(example: Example) -> str:
    return f"{example.question_text}\n{VQA_INSTRUCTION}"


def _scienceqa_turn(example: Example) -> str:
    """LLaVA-1.5's ScienceQA format (`llava_test_CQM-A.json` with --single-pred-prompt)."""
    lines = [f"Context: {example.meta['hint']}"] if example.meta["hint"] else []
    lines.append(example.question_text)
    lines += [f"{OPTION_LETTERS[i]}. {c}" for i, c in enumerate(example.choices)]
    lines.append(CHOICE_INSTRUCTION)
    return "\n".join(lines)


def _query_turn(example: Example) -> str:
    """MathVista's `query` / MathVerse's `query_wo`: the benchmarks' own prompts (hint, question, choices)."""
    return example.meta["query"]


def _mathvision_turn(example: Example) -> str:
    """MATH-Vision has no official query field; this mirrors MathVista's query layout. Inline figure tags
    (`<image1>`) are dropped: the model sees the question's single composite image."""
    question = _INLINE_IMAGE_TAG.sub(" ", example.question_text)
    question = "\n".join(line.strip() for line in question.splitlines() if line.strip())
    if not example.choices:
        return f"Hint: Please answer the question and provide the final answer at the end.\nQuestion: {question}"
    lines = ["Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.",
             f"Question: {question}"]
    if any(c != OPTION_LETTERS[i] for i, c in enumerate(example.choices)):
        lines.append("Choices:")
        lines += [f"({OPTION_LETTERS[i]}) {c}" for i, c in enumerate(example.choices)]
    return "\n".join(lines)


_TURN_TEXT = {"okvqa": _vqa_turn, "textvqa": _vqa_turn, "scienceqa": _scienceqa_turn,
              "mathvista": _query_turn, "mathverse": _query_turn, "mathvision": _mathvision_turn}


def turn_text(example: Example) -> str:
    """The user-turn text (instruction included, image placeholder excluded) for an example of any benchmark."""
    text = _TURN_TEXT[example.benchmark](example)
    if IMAGE_PLACEHOLDER in text:
        raise ValueError(f"{example.benchmark} question {example.qid}: text contains the image placeholder "
                         f"{IMAGE_PLACEHOLDER!r}, which would desynchronise images and image tokens")
    return text


def demonstration_answer(example: Example) -> str:
    """The assistant reply of a demonstration turn: the first ground-truth answer (VQA: the first human
    answer, as the seeds' `x["answers"][0]`; multiple choice: the option letter; math: the answer value)."""
    if not example.answers or not example.answers[0]:
        raise ValueError(f"{example.benchmark} question {example.qid}: a demonstration needs a ground-truth answer")
    return example.answers[0]


def conversation_text(turns: Sequence[tuple[str, str | None]]) -> str:
    """LLaVA `Conversation.get_prompt()` for SeparatorStyle.TWO: messages alternate USER / ASSISTANT, a message
    is followed by SEP after a user turn and SEP2 after an assistant turn; a None message is left open."""
    text = SYSTEM_PROMPT + SEP
    seps = (SEP, SEP2)
    for i, (role, message) in enumerate(turns):
        text += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
    return text


def build_prompt(query: Example, demonstrations: Sequence[Example] = ()) -> Prompt:
    """The few-shot prompt for `query`: demonstrations in the given order (RICES puts the most similar last),
    each an image + question turn answered by its ground truth, then the query turn with the answer open."""
    turns: list[tuple[str, str | None]] = []
    for demo in demonstrations:
        turns.append((ROLES[0], f"{IMAGE_PLACEHOLDER}\n{turn_text(demo)}"))
        turns.append((ROLES[1], demonstration_answer(demo)))
    turns.append((ROLES[0], f"{IMAGE_PLACEHOLDER}\n{turn_text(query)}"))
    turns.append((ROLES[1], None))
    return Prompt(text=conversation_text(turns),
                  image_paths=tuple(d.image_path for d in demonstrations) + (query.image_path,))
