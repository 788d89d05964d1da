"""The CPU demo's 120 held-out questions (`python -m vlm_jax.train --config configs/demo.py` writes them to
workdir/demo/corpus/heldout.jsonl), answered by generation with 0..k demonstrations from the same file (never
the question itself), chosen by RICES on the evaluated model's own vision tower. Prompts are laid out as the
demo's training documents ("<image>What is in the image? Answer: cat."); the score is the first generated
word against the subject's name.

    python -m vlm_jax.evaluate --config configs/eval/demo.py --ckpt workdir/demo/final --config.shots=2
"""
from vlm_jax.evaluate.run_config import base_config

HELDOUT = "workdir/demo/corpus/heldout.jsonl"


def get_config():
    split = {"loader": "demo_heldout", "path": HELDOUT}
    c = base_config("demo", eval_split=split, demo_split=split)
    c.prompt_template = "interleaved"
    c.rices.encoder = "model"  # the demo checkpoint's own CLIP tower (no download)
    c.dtype = "float32"
    c.batch_size = 40
    c.output_dir = "workdir/demo/eval"
    return c
