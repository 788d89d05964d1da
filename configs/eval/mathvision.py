"""MATH-Vision test (3040 questions, `data/test.jsonl`; `testmini.jsonl` for the 304-question subset).
Demonstrations come from MathVista testmini, as the original (`scripts/mathvision_fewshot.sh`)."""
from vlm_jax.evaluate.run_config import base_config

ROOT = "data/eval/mathvision"
MATHVISTA = "data/eval/mathvista"


def get_config():
    return base_config(
        "mathvision",
        eval_split={"loader": "mathvision", "path": f"{ROOT}/data/test.jsonl", "image_dir": ROOT},
        demo_split={"loader": "mathvista", "path": f"{MATHVISTA}/testmini.json", "image_dir": MATHVISTA})
