"""TextVQA val (5000 questions), demonstrations from train, in TextVQA's native files (`TextVQA_0.5.1_*.json`,
images `<image_id>.jpg`). For VQA-format files use loader "vqa" with questions_path / annotations_path."""
from vlm_jax.evaluate.run_config import base_config

ROOT = "data/eval/textvqa"


def get_config():
    return base_config(
        "textvqa",
        eval_split={"loader": "textvqa", "path": f"{ROOT}/TextVQA_0.5.1_val.json",
                    "image_dir": f"{ROOT}/train_images"},
        demo_split={"loader": "textvqa", "path": f"{ROOT}/TextVQA_0.5.1_train.json",
                    "image_dir": f"{ROOT}/train_images"})
