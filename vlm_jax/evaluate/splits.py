"""Benchmark splits named in evaluation configs: `{"loader": NAME, **loader keyword arguments}` → examples.

A config names each split it needs (the evaluated questions and the demonstration pool) as plain data, e.g.
`{"loader": "vqa", "questions_path": ".../OpenEnded_mscoco_val2014_questions.json", "annotations_path": ...,
"image_dir": ".../val2014", "benchmark": "okvqa"}`; the keyword arguments are those of the loader.
"""
from __future__ import annotations

from typing import Any, Mapping

from vlm_jax.evaluate.data_math import load_mathverse, load_mathvision, load_mathvista
from vlm_jax.evaluate.data_scienceqa import load_scienceqa
from vlm_jax.evaluate.data_vqa import load_textvqa, load_vqa
from vlm_jax.evaluate.examples import Example

LOADERS = {"vqa": load_vqa, "textvqa": load_textvqa, "scienceqa": load_scienceqa,
           "mathvista": load_mathvista, "mathvision": load_mathvision, "mathverse": load_mathverse}


def load_split(spec: Mapping[str, Any], where: str = "split") -> list[Example]:
    """The examples of the split `spec` describes (`loader` + that loader's keyword arguments); a ValueError
    naming `where` for an unknown loader or arguments the loader does not take."""
    spec = dict(spec)
    name = spec.pop("loader", None)
    if name not in LOADERS:
        raise ValueError(f"{where}.loader={name!r}: expected one of {sorted(LOADERS)}")
    try:
        return LOADERS[name](**spec)
    except TypeError as e:
        raise ValueError(f"{where}: bad arguments {sorted(spec)} for loader {name!r} ({e})") from e
