"""ScienceQA test: the run generates for the image questions, the original's overall accuracy counts the whole
split (`img_accuracy`: image questions only); demonstrations from the train split's image questions (the
original's `train_with_image.json`)."""
from vlm_jax.evaluate.run_config import base_config

ROOT = "data/eval/scienceqa"


def get_config():
    split = {"loader": "scienceqa", "problems_path": f"{ROOT}/problems.json",
             "pid_splits_path": f"{ROOT}/pid_splits.json", "image_root": f"{ROOT}/images"}
    return base_config("scienceqa", eval_split={**split, "split": "test"},
                       demo_split={**split, "split": "train", "images_only": True})
