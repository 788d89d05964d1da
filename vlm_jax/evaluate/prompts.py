"""Few-shot prompts as segments (text / image / end-of-turn) that go straight to token ids.

A benchmark family writes each turn's text (`registry.Benchmark.query_turn` / `demo_turn`); a *template*
lays the turns out as segments. Templates are pluggable: `TEMPLATES[name](turns) -> Prompt`; `llava_v1` is
LLaVA-1.5's conversation (Vicuna v1 separators), exactly what LLaVA's `Conversation.get_prompt()`
(SeparatorStyle.TWO, sep " ", sep2 "</s>") gives for the messages the Multimodal-Textbook loaders append:

    {system} USER: <image>\\n{demo question} ASSISTANT: {demo answer}</s>USER: <image>\\n{question} ASSISTANT:

Here `<image>` is an `Image` segment and `</s>` an `EndOfTurn` segment: no string round trip through
placeholders, so a literal "<image>" or "</s>" inside a question stays plain text. `Prompt.render()` writes
the string form above for prediction records.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

SYSTEM_PROMPT = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
ROLES = ("USER", "ASSISTANT")
IMAGE_PLACEHOLDER = "<image>"  # only in rendered prompts
END_OF_TURN = "</s>"  # only in rendered prompts
DEFAULT_TEMPLATE = "llava_v1"


@dataclasses.dataclass(frozen=True)
class Text:
    text: str


@dataclasses.dataclass(frozen=True)
class Image:
    path: str


@dataclasses.dataclass(frozen=True)
class EndOfTurn:
    pass


Segment = Text | Image | EndOfTurn


@dataclasses.dataclass(frozen=True)
class Turn:
    """One user turn about one image: its text (instruction included, no image placeholder) and the assistant's
    answer (None: the query turn, left open). `example` lets another model family's template write the turn
    from the example's own fields instead of `text`."""

    image_path: str
    text: str
    answer: str | None = None
    example: Any = None  # the benchmark Example the turn is about, for templates that write their own text


@dataclasses.dataclass(frozen=True)
class Prompt:
    """Segments in order; adjacent texts are merged (`make_prompt`)."""

    segments: tuple[Segment, ...]

    @property
    def image_paths(self) -> tuple[str, ...]:
        return tuple(s.path for s in self.segments if isinstance(s, Image))

    def render(self) -> str:
        """The prompt as one string with `<image>` and `</s>` (for records and reading; never tokenized)."""
        return "".join(s.text if isinstance(s, Text) else IMAGE_PLACEHOLDER if isinstance(s, Image) else END_OF_TURN
                       for s in self.segments)


def make_prompt(segments: Sequence[Segment]) -> Prompt:
    """A Prompt with adjacent Text segments merged and empty texts dropped."""
    out: list[Segment] = []
    for s in segments:
        if isinstance(s, Text):
            if not s.text:
                continue
            if out and isinstance(out[-1], Text):
                out[-1] = Text(out[-1].text + s.text)
                continue
        out.append(s)
    return Prompt(tuple(out))


def parse_rendered(text: str) -> Prompt:
    """The segments of a rendered prompt string (`<image>` → Image with an empty path, `</s>` → EndOfTurn): for
    prompt strings written elsewhere (records, the original's loaders)."""
    segments: list[Segment] = []
    for k, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if k:
            segments.append(Image(""))
        for j, piece in enumerate(chunk.split(END_OF_TURN)):
            if j:
                segments.append(EndOfTurn())
            segments.append(Text(piece))
    return make_prompt(segments)


def llava_v1(turns: Sequence[Turn]) -> Prompt:
    """LLaVA-1.5 `conv_llava_v1`: system + " ", then per turn "USER: " <image> "\\n{text} " "ASSISTANT: {answer}"
    </s>, the last (query) turn ending with the open "ASSISTANT:"."""
    segments: list[Segment] = [Text(SYSTEM_PROMPT + " ")]
    for turn in turns:
        segments += [Text(f"{ROLES[0]}: "), Image(turn.image_path), Text(f"\n{turn.text} ")]
        if turn.answer is None:
            segments.append(Text(f"{ROLES[1]}:"))
        else:
            if not turn.answer:
                raise ValueError(f"a demonstration about {turn.image_path} has an empty answer")
            segments += [Text(f"{ROLES[1]}: {turn.answer}"), EndOfTurn()]
    return make_prompt(segments)


Template = Callable[[Sequence[Turn]], Prompt]
TEMPLATES: dict[str, Template] = {"llava_v1": llava_v1}


def register_template(name: str, template: Template) -> None:
    """Adds a prompt template (e.g. another model family's few-shot format) under `name`."""
    TEMPLATES[name] = template


def build_prompt(turns: Sequence[Turn], template: str = DEFAULT_TEMPLATE) -> Prompt:
    """The prompt of demonstration turns followed by the query turn (answer None) in template `template`."""
    if template not in TEMPLATES:
        raise ValueError(f"prompt template {template!r}: expected one of {sorted(TEMPLATES)}")
    if not turns or turns[-1].answer is not None or any(t.answer is None for t in turns[:-1]):
        raise ValueError("a prompt is answered demonstration turns followed by one open query turn")
    return TEMPLATES[template](turns)
