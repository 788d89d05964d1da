"""MATH-Vision test (3040 questions, `data/test.jsonl`; `testmini.jsonl` for the 304-question subset).
No training split: demonstrations come from the same file, never the question itself."""
from vlm_jax.evaluate.run_config import base_config

ROOT = "data/eval/mathvision"


def get_config():
    split = {"loader": "mathvision", "path": f"{ROOT}/data/test.jsonl", "image_dir": ROOT}
    return base_config("mathvision", eval_split=split, demo_split=split)
