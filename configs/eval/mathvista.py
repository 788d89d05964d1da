"""MathVista testmini (1000 questions). Demonstrations come from MATH-Vision test, as the original
(`scripts/mathvista_fewshot.sh`: `--train_question_path .../mathvision/test.json`); in-file demonstrations
(vlm_jax's former choice) with `--config.demo_split.loader=mathvista --config.demo_split.path=...`."""
from vlm_jax.evaluate.run_config import base_config

ROOT = "data/eval/mathvista"
MATHVISION = "data/eval/mathvision"


def get_config():
    return base_config(
        "mathvista",
        eval_split={"loader": "mathvista", "path": f"{ROOT}/testmini.json", "image_dir": ROOT},
        demo_split={"loader": "mathvision", "path": f"{MATHVISION}/data/test.jsonl", "image_dir": MATHVISION})
