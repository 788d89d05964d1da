"""MathVerse testmini (the versions with an image). No training split: demonstrations come from the same file,
never the question itself."""
from vlm_jax.evaluate.run_config import base_config

ROOT = "data/eval/mathverse"


def get_config():
    split = {"loader": "mathverse", "path": f"{ROOT}/testmini.json", "image_dir": f"{ROOT}/images"}
    return base_config("mathverse", eval_split=split, demo_split=split)
