"""`python -m vlm_jax.generate` and `vlm_jax.generation.generate` on a converted tiny random llava-hf model
give the same tokens as transformers' `LlavaForConditionalGeneration.generate` (greedy) on the same weights,
images and prompt."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPImageProcessor, PreTrainedTokenizerFast

import tiny_hf_models as tiny
from vlm_jax.convert.__main__ import main as convert_main
from vlm_jax.convert.orbax_params import PARAMS_DIR, read_config, restore_params
from vlm_jax.generate import main as generate_main
from vlm_jax.generation import generate, left_pad
from vlm_jax.models.llava import Llava

REPO = Path(__file__).resolve().parents[1]
IMG = tiny.IMAGE_TOKEN
N_TOKENS = 4  # (28 / 14) ** 2


def save_word_tokenizer(path: Path) -> None:
    """A whitespace word-level tokenizer over the tiny vocabulary: `w5` is id 5, `<image>` id IMG."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, tiny.VOCAB) if i != IMG}}
    vocab["<image>"] = IMG
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            additional_special_tokens=["<image>"]).save_pretrained(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    model = tiny.llava_hf(root / "hf", seed=3)
    save_word_tokenizer(root / "hf")
    assert convert_main(["hf-to-orbax", "--hf", str(root / "hf"), "--out", str(root / "ckpt")]) == 0
    rng = np.random.default_rng(0)
    images = []
    for i, side in enumerate((40, 64, 50)):
        images.append(root / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(images[-1])
    return root, model, images


def hf_pixels(root: Path, images: list[Path]) -> torch.Tensor:
    """pixel_values by transformers' own CLIPImageProcessor (square images: LLaVA's pad is a no-op)."""
    processor = CLIPImageProcessor.from_pretrained(root / "hf")
    return processor(images=[Image.open(p) for p in images], return_tensors="pt")["pixel_values"]


def hf_generate(model, ids: list[int], pixel_values, max_new_tokens: int, **kwargs) -> list[int]:
    if pixel_values is not None:
        kwargs["pixel_values"] = pixel_values
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    return out[0, len(ids):].tolist()


def expand(ids: list[int]) -> list[int]:
    return [t for i in ids for t in ([i] * N_TOKENS if i == IMG else [i])]


def cli_json(argv, capsys) -> dict:
    assert generate_main([str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_greedy_two_images_matches_transformers(setup, capsys):
    root, model, images = setup
    ids = [1, 5, IMG, 7, 8, IMG, 9, 10]
    want = hf_generate(model, expand(ids), hf_pixels(root, images[:2]), 12)
    base = ["--ckpt", root / "ckpt", "--image", images[0], "--image", images[1], "--max-new-tokens", 12, "--json"]
    got = cli_json(base + ["--input-ids", ",".join(map(str, ids))], capsys)
    assert got["token_ids"] == want
    assert got["text"] is not None  # the checkpoint has a tokenizer, so the ids are decoded
    expanded = cli_json(base + ["--input-ids", ",".join(map(str, expand(ids)))], capsys)
    assert expanded["token_ids"] == want
    prompt = cli_json(base + ["--prompt", "w5 <image> w7 w8 <image> w9 w10"], capsys)
    assert prompt["token_ids"] == want
    assert prompt["text"] == " ".join(f"w{t}" for t in want if t > 2)


def test_cli_subprocess(setup):
    root, model, images = setup
    ids = [1, IMG, 6, 7]
    want = hf_generate(model, expand(ids), hf_pixels(root, images[2:]), 6)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "vlm_jax.generate", "--ckpt", str(root / "ckpt"), "--image", str(images[2]),
         "--prompt", "w6 w7", "--max-new-tokens", "6", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["token_ids"] == want


def test_batched_left_padded_rows_match_per_row_and_stop_at_eos(setup):
    root, model, images = setup
    config = read_config(root / "ckpt")
    params = restore_params(root / "ckpt" / PARAMS_DIR)
    pixels = hf_pixels(root, images)
    rows = [[1, 5, IMG, 7, 8, IMG, 9], [1, 11, 12, 13, 14, IMG, 15, 16, 17, 18, 19], [1, 20, 21]]
    row_images = [[0, 1], [2], []]
    free = [hf_generate(model, expand(r), pixels[idx] if idx else None, 8) for r, idx in zip(rows, row_images)]
    eos = free[0][3]  # row 0 must stop after its 4th token (or earlier, if that token came sooner)
    want = [hf_generate(model, expand(r), pixels[idx] if idx else None, 8, eos_token_id=eos)
            for r, idx in zip(rows, row_images)]
    assert len(want[0]) <= 4 and want[0][-1] == eos
    ids, seg = left_pad([expand(r) for r in rows])
    pv = np.zeros((3, 2, 28, 28, 3), np.float32)
    mask = np.zeros((3, 2), bool)
    for row, idx in enumerate(row_images):
        for slot, i in enumerate(idx):
            pv[row, slot] = pixels[i].permute(1, 2, 0).numpy()
            mask[row, slot] = True
    out = generate(Llava(config), params, ids, seg, pv, mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=0)
    assert out.rows() == want
    assert out.tokens.shape == (3, 8) and (out.tokens[0, len(want[0]):] == 0).all()
    # sampling with a vanishing nucleus keeps only the top token: equal to greedy, whatever the seed
    nucleus = generate(Llava(config), params, ids, seg, pv, mask, max_new_tokens=8, eos_token_id=eos,
                       temperature=1.0, top_p=1e-6, seed=5)
    assert nucleus.rows() == want
    sampled = [generate(Llava(config), params, ids, seg, pv, mask, max_new_tokens=8, eos_token_id=-1,
                        temperature=5.0, seed=s).rows() for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]


def test_cli_rejects_image_count_mismatch(setup, capsys):
    root, _, images = setup
    code = generate_main(["--ckpt", str(root / "ckpt"), "--image", str(images[0]), "--input-ids", f"1,{IMG},{IMG}",
                          "--max-new-tokens", "2"])
    assert code == 2 and "2 images but 1 --image" in capsys.readouterr().err
