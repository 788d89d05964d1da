"""The benchmark registry both command forms read (`python -m vlm_jax.evaluate` runs, `... score` scores).

Each benchmark family module (`vqa`, `scienceqa`, `visual_math`) defines its loaders, its prompt turns, its
scorer and its breakdowns, and registers one `Benchmark` per benchmark it serves; a config names the benchmark
and its splits as `{"loader": NAME, **loader keyword arguments}`. Adding a benchmark touches one family module
and one config file.

Protocols: "original" (default) reproduces the Multimodal-Textbook code's prompts and scorers; "standard" keeps
vlm_jax's own choices (see the README section "Reproducing the paper's protocol").
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, Sequence

from vlm_jax.evaluate.examples import Example

PROTOCOLS = ["original", "standard"]  # another model family's evaluation adds its own (`register_protocol`)


@dataclasses.dataclass(frozen=True)
class Scored:
    """A scorer's result: `summary` (benchmark, accuracy %, count, missing, per_* breakdowns, scorer) and one
    record per question (`question_id`, `ground_truth`, `extracted`, `score` in [0, 1])."""

    summary: dict
    records: list[dict]


# score(examples, predictions {qid: raw generation}, *, protocol, allow_missing, judge) -> Scored
Scorer = Callable[..., Scored]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark as the run and the scorer see it.

    query_turn(example, protocol) -> the query turn's text (no image placeholder);
    demo_turn(demo, protocol) -> (text, answer) of a demonstration, written as the *evaluated* benchmark's
        loader writes its pool items (a MathVista run writes MATH-Vision demonstrations its own way);
    self_turn(query, protocol) -> (text, answer) of the query as its own first demonstration (ablation);
    generated(example) -> whether the run generates for this example (ScienceQA: image questions only; the
        others still count in the original's overall accuracy);
    max_new_tokens: the original's generation length for this benchmark.
    """

    name: str
    query_turn: Callable[[Example, str], str]
    demo_turn: Callable[[Example, str], tuple[str, str]]
    score: Scorer
    self_turn: Callable[[Example, str], tuple[str, str]] | None = None
    generated: Callable[[Example], bool] = lambda e: True
    max_new_tokens: int = 128
    judged: bool = False  # scored by the original's LLM judge when an endpoint is configured


REGISTRY: dict[str, Benchmark] = {}
LOADERS: dict[str, Callable[..., list[Example]]] = {}


def register(benchmark: Benchmark) -> Benchmark:
    """Adds (or replaces) a benchmark in the registry."""
    REGISTRY[benchmark.name] = benchmark
    return benchmark


def register_loader(name: str, loader: Callable[..., list[Example]]) -> None:
    """Adds a split loader a config can name as `{"loader": name, ...}`."""
    LOADERS[name] = loader


def _ensure_families() -> None:
    # the family modules register themselves on import
    from vlm_jax.evaluate import demo_questions, scienceqa, visual_math, vqa  # noqa: F401


def get(name: str) -> Benchmark:
    """The registered benchmark `name`; a ValueError listing the known ones otherwise."""
    _ensure_families()
    if name not in REGISTRY:
        raise ValueError(f"benchmark {name!r}: expected one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def names() -> list[str]:
    _ensure_families()
    return sorted(REGISTRY)


def register_protocol(name: str) -> None:
    """Adds a protocol name the turn writers and scorers of registered benchmarks understand."""
    if name not in PROTOCOLS:
        PROTOCOLS.append(name)


def load_split(spec: Mapping[str, Any], where: str = "split") -> list[Example]:
    """The examples of the split `spec` describes (`loader` + that loader's keyword arguments); a ValueError
    naming `where` for an unknown loader or arguments the loader does not take."""
    _ensure_families()
    spec = dict(spec)
    name = spec.pop("loader", None)
    if name not in LOADERS:
        raise ValueError(f"{where}.loader={name!r}: expected one of {sorted(LOADERS)}")
    params = inspect.signature(LOADERS[name]).parameters
    unknown = sorted(set(spec) - set(params))
    if unknown:
        raise ValueError(f"{where}: bad arguments {unknown} for loader {name!r} (it takes {sorted(params)})")
    return LOADERS[name](**spec)


def turns_for(benchmark: Benchmark, query: Example, demos: Sequence[Example], protocol: str,
              self_first: bool = False):
    """The prompt turns (demonstrations in order, then the open query turn) of one question."""
    from vlm_jax.evaluate.prompts import Turn
    turns = []
    for i, demo in enumerate(demos):
        if self_first and i == 0 and demo is query and benchmark.self_turn is not None:
            text, answer = benchmark.self_turn(query, protocol)
        else:
            text, answer = benchmark.demo_turn(demo, protocol)
        turns.append(Turn(demo.image_path, text, answer, demo))
    turns.append(Turn(query.image_path, benchmark.query_turn(query, protocol), None, query))
    return turns
