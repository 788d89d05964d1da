"""MathVista testmini (1000 questions). It has no training split: demonstrations come from the same file,
never the question itself."""
from vlm_jax.evaluate.run_config import base_config

ROOT = "data/eval/mathvista"


def get_config():
    split = {"loader": "mathvista", "path": f"{ROOT}/testmini.json", "image_dir": ROOT}
    return base_config("mathvista", eval_split=split, demo_split=split)
