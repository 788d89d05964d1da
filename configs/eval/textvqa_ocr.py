"""TextVQA val with OCR tokens in the prompt (the paper's "TextVQA_ocr" column; the original's
`OpenflamingVQAWithOCRDataset` with `--train_ocr_path`): OCR tokens from TextVQA's Rosetta OCR files."""
from vlm_jax.evaluate.run_config import base_config

ROOT = "data/eval/textvqa"


def get_config():
    return base_config(
        "textvqa_ocr",
        eval_split={"loader": "textvqa", "benchmark": "textvqa_ocr", "path": f"{ROOT}/TextVQA_0.5.1_val.json",
                    "image_dir": f"{ROOT}/train_images", "ocr_path": f"{ROOT}/TextVQA_Rosetta_OCR_v0.2_val.json"},
        demo_split={"loader": "textvqa", "benchmark": "textvqa_ocr", "path": f"{ROOT}/TextVQA_0.5.1_train.json",
                    "image_dir": f"{ROOT}/train_images", "ocr_path": f"{ROOT}/TextVQA_Rosetta_OCR_v0.2_train.json"})
