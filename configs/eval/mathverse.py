"""MathVerse testmini (the versions with an image). Demonstrations come from MATH-Vision test, as the original
(`scripts/mathverse_fewshot.sh`): MathVerse holds each problem in several versions sharing image and answer,
so in-file retrieval would show the question's own answer."""
from vlm_jax.evaluate.run_config import base_config

ROOT = "data/eval/mathverse"
MATHVISION = "data/eval/mathvision"


def get_config():
    return base_config(
        "mathverse",
        eval_split={"loader": "mathverse", "path": f"{ROOT}/testmini.json", "image_dir": f"{ROOT}/images"},
        demo_split={"loader": "mathvision", "path": f"{MATHVISION}/data/test.jsonl", "image_dir": MATHVISION})
