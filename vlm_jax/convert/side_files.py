"""The non-weight files a checkpoint needs to be used: tokenizer, image preprocessor, generation defaults.

They travel unchanged between a Hugging Face folder and an orbax checkpoint folder, so a converted
checkpoint can tokenize prompts and preprocess images exactly as its source did.
"""
from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "chat_template.json", "chat_template.jinja", "vocab.json", "merges.txt",
)
PREPROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
GENERATION_FILES = ("generation_config.json",)
SIDE_FILES = TOKENIZER_FILES + PREPROCESSOR_FILES + GENERATION_FILES


def copy_side_files(sources: list[Path], dst: Path, names: tuple[str, ...] = SIDE_FILES) -> dict[str, Path]:
    """Copies each of `names` from the first folder in `sources` that has it into `dst`; returns name -> source."""
    copied: dict[str, Path] = {}
    for name in names:
        for src in sources:
            if (Path(src) / name).is_file():
                shutil.copyfile(Path(src) / name, Path(dst) / name)
                copied[name] = Path(src) / name
                break
    return copied
