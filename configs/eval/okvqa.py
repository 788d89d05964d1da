"""OK-VQA val2014 (5046 questions), demonstrations from train2014. Paths relative to the working directory."""
from vlm_jax.evaluate.run_config import base_config

ROOT = "data/eval/okvqa"


def get_config():
    return base_config(
        "okvqa",
        eval_split={"loader": "vqa", "benchmark": "okvqa",
                    "questions_path": f"{ROOT}/OpenEnded_mscoco_val2014_questions.json",
                    "annotations_path": f"{ROOT}/mscoco_val2014_annotations.json",
                    "image_dir": f"{ROOT}/val2014"},
        demo_split={"loader": "vqa", "benchmark": "okvqa",
                    "questions_path": f"{ROOT}/OpenEnded_mscoco_train2014_questions.json",
                    "annotations_path": f"{ROOT}/mscoco_train2014_annotations.json",
                    "image_dir": f"{ROOT}/train2014"})
