"""`python -m vlm_jax.generate` and `vlm_jax.inference.generation.generate` on a converted tiny random llava-hf model
give the same tokens as transformers' `LlavaForConditionalGeneration.generate` (greedy) on the same weights,
images and prompt."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPImageProcessor, PreTrainedTokenizerFast

import tiny_hf_models as tiny
from vlm_jax.convert.__main__ import main as convert_main
from vlm_jax.checkpoint import load_config, load_params
from vlm_jax.generate import main as generate_main
from vlm_jax.inference.generation import (bucket_length, gather_rows, generate, generation_weights, left_pad,
                                          local_data_mesh, plan_packing, process_slice, sample_tokens)
from vlm_jax.sharding import make_mesh
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


def test_cli_image_aspect_ratio_pad_and_none_match_transformers(setup, capsys, tmp_path):
    root, model, _ = setup
    wide = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 52, 3), dtype=np.uint8))
    wide.save(tmp_path / "wide.png")
    processor = CLIPImageProcessor.from_pretrained(root / "hf")
    square = Image.new("RGB", (52, 52), tuple(int(m * 255) for m in processor.image_mean))  # LLaVA's expand2square
    square.paste(wide, (0, 11))
    ids = [1, IMG, 6, 7]
    for aspect, image in (("pad", square), ("none", wide)):
        want = hf_generate(model, expand(ids), processor(images=[image], return_tensors="pt")["pixel_values"], 6)
        got = cli_json(["--ckpt", root / "ckpt", "--image", tmp_path / "wide.png", "--input-ids", f"1,{IMG},6,7",
                        "--max-new-tokens", 6, "--image-aspect-ratio", aspect, "--json"], capsys)
        assert got["token_ids"] == want, aspect


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


def test_load_handle_batch_equals_transformers_per_prompt(setup):
    """`vlm_jax.load(ckpt).generate` on a batch of text and id prompts with different image counts gives each
    prompt transformers' greedy tokens, and a single prompt gives a single result."""
    import vlm_jax

    root, model, images = setup
    vlm = vlm_jax.load(root / "ckpt")
    prompts = ["w5 <image> w7 w8 <image> w9", [1, 11, 12, IMG, 13], "w20 w21"]
    per_prompt = [[images[0], images[1]], [images[2]], []]
    got = vlm.generate(prompts, per_prompt, max_new_tokens=6)
    wants = [hf_generate(model, expand([1, 5, IMG, 7, 8, IMG, 9]), hf_pixels(root, images[:2]), 6),
             hf_generate(model, expand([1, 11, 12, IMG, 13]), hf_pixels(root, images[2:]), 6),
             hf_generate(model, [1, 20, 21], None, 6)]
    assert [g["token_ids"] for g in got] == wants
    assert vlm.generate(prompts[0], per_prompt[0], max_new_tokens=6)["token_ids"] == wants[0]
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        vlm.generate(prompts[0], per_prompt[1])


ROWS = [[1, 5, IMG, 7, 8, IMG, 9], [1, 11, 12, 13, 14, IMG, 15, 16, 17, 18, 19], [1, 20, 21], [1, IMG, 3, 4],
        [1, 30, IMG, IMG, 31]]
ROW_IMAGES = [[0, 1], [2], [], [1], [2, 0]]


def batch_arrays(pixels, rows, row_images):
    """Left-padded ids and `[b, 2, 28, 28, 3]` pixels with per-row image counts (channels-last)."""
    ids, seg = left_pad([expand(r) for r in rows])
    pv = np.zeros((len(rows), 2, 28, 28, 3), np.float32)
    mask = np.zeros((len(rows), 2), bool)
    for row, idx in enumerate(row_images):
        for slot, i in enumerate(idx):
            pv[row, slot] = pixels[i].permute(1, 2, 0).numpy()
            mask[row, slot] = True
    return ids, seg, pv, mask


@pytest.fixture(scope="module")
def loaded(setup):
    root, _, images = setup
    return Llava(load_config(root / "ckpt")), load_params(root / "ckpt", sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])), hf_pixels(root, images)


def test_batched_left_padded_rows_match_per_row_and_stop_at_eos(setup, loaded):
    root, model, images = setup
    llava, params, pixels = loaded
    rows, row_images = ROWS[:3], ROW_IMAGES[:3]
    free = [hf_generate(model, expand(r), pixels[idx] if idx else None, 8) for r, idx in zip(rows, row_images)]
    eos = free[0][3]  # row 0 must stop after its 4th token (or earlier, if that token came sooner)
    want = [hf_generate(model, expand(r), pixels[idx] if idx else None, 8, eos_token_id=eos)
            for r, idx in zip(rows, row_images)]
    assert len(want[0]) <= 4 and want[0][-1] == eos
    ids, seg, pv, mask = batch_arrays(pixels, rows, row_images)
    out = generate(llava, params, ids, seg, pv, mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=0)
    assert out.rows() == want
    assert out.tokens.shape == (3, 8) and (out.tokens[0, len(want[0]):] == 0).all()
    unbucketed = generate(llava, params, ids, seg, pv, mask, max_new_tokens=8, eos_token_id=eos, bucket_prompts=False)
    assert unbucketed.rows() == want
    # the prefill above ran packed (rows 0 and 2, with 2 and 0 images, share a sequence); unpacked: the same tokens
    plan = plan_packing(llava.config, seg.sum(1), bucket_length(seg.shape[1]))
    assert plan is not None and plan.num_rows == 2 and plan.row[0] == plan.row[2]
    unpacked = generate(llava, params, ids, seg, pv, mask, max_new_tokens=8, eos_token_id=eos, pack_prefill=False)
    assert unpacked.rows() == want
    # the CPU weights' copy made once beforehand (as `vlm_jax.load`'s handle does): the same tokens
    prepared = generation_weights(llava, params)
    assert prepared is not None  # CPU: the layers run on a transposed copy
    assert generate(llava, params, ids, seg, pv, mask, max_new_tokens=8, eos_token_id=eos,
                    prepared_weights=prepared).rows() == want
    # sampling with a vanishing nucleus keeps only the top token: equal to greedy, whatever the seed
    nucleus = generate(llava, params, ids, seg, pv, mask, max_new_tokens=8, eos_token_id=eos,
                       temperature=1.0, top_p=1e-6, seed=5)
    assert nucleus.rows() == want
    sampled = [generate(llava, params, ids, seg, pv, mask, max_new_tokens=8, eos_token_id=-1,
                        temperature=5.0, seed=s).rows() for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]


def test_data_parallel_8_devices_same_tokens_in_order(loaded):
    llava, params, pixels = loaded
    assert jax.device_count() == 8
    ids, seg, pv, mask = batch_arrays(pixels, ROWS, ROW_IMAGES)  # 5 rows: not a multiple of 8
    kwargs = dict(max_new_tokens=6, eos_token_id=-1)
    single = generate(llava, params, ids, seg, pv, mask, **kwargs)
    for mesh in (local_data_mesh(), make_mesh(data=2, fsdp=4)):
        parallel = generate(llava, params, ids, seg, pv, mask, mesh=mesh, **kwargs)
        assert parallel.rows() == single.rows()
    # params sharded FSDP-style on the mesh are gathered to every device first: same tokens
    fsdp = make_mesh(data=2, fsdp=4)
    sharded = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(fsdp, PartitionSpec(
        "fsdp" if x.ndim and x.shape[0] % 4 == 0 else None))), params)
    assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded))
    assert generate(llava, sharded, ids, seg, pv, mask, mesh=fsdp, **kwargs).rows() == single.rows()
    # sampled rows draw from per-row keys: the device count, the mesh shape and padding rows do not change them
    sampled = [generate(llava, params, ids, seg, pv, mask, temperature=3.0, seed=7, mesh=m, **kwargs).rows()
               for m in (None, local_data_mesh(), make_mesh(data=2, fsdp=4))]
    assert sampled[0] == sampled[1] == sampled[2] != single.rows()
    text_only = [generate(llava, params, *left_pad([[1, 5, 6, 7], [1, 8], [1, 9, 10]]), None, None, temperature=3.0,
                          seed=7, mesh=m, **kwargs).rows() for m in (None, local_data_mesh())]
    assert text_only[0] == text_only[1]
    # 11 rows over 8 devices, reversed order: the reversed results
    rev = [ROWS[i % 5] for i in range(11)][::-1], [ROW_IMAGES[i % 5] for i in range(11)][::-1]
    many = generate(llava, params, *batch_arrays(pixels, *rev), mesh=local_data_mesh(), **kwargs)
    assert many.rows() == [single.rows()[i % 5] for i in range(11)][::-1]


def test_process_slices_and_gather_cover_every_item_once():
    rows = [[i] * (i % 4) for i in range(10)]
    for count in (1, 3, 4, 16):
        slices = [process_slice(10, p, count) for p in range(count)]
        assert sorted(i for s in slices for i in s) == list(range(10))
        # the all-gather of `count` processes: every process's packed rows, stacked
        stack = lambda x: np.stack([_packed(rows, s, x.shape[0]) for s in slices])  # noqa: E731
        for s in slices:
            assert gather_rows([rows[i] for i in s], list(s), 10, 3, process_count=count, allgather=stack) == rows
    assert process_slice(10, 0) == range(10)  # this (single) process takes everything
    assert gather_rows(rows, list(range(10)), 10, 3) == rows  # real multihost_utils all-gather, 1 process
    with pytest.raises(ValueError, match=r"missing \[9\], duplicated \[0\]"):
        gather_rows(rows[:10], [0] + list(range(9)), 10, 3, process_count=1)


def _packed(rows, indices, per):
    from vlm_jax.inference.generation import _pack_rows

    return _pack_rows([rows[i] for i in indices], list(indices), per, 3)


def test_top_p_samples_only_from_the_nucleus():
    probs = np.array([0.5, 0.05, 0.3, 0.15])
    logits = np.tile(np.log(probs), (4000, 1)).astype(np.float32)
    for top_p, nucleus in ((0.7, {0, 2}), (0.85, {0, 2, 3}), (0.5, {0}), (1.0, {0, 1, 2, 3})):
        drawn = np.asarray(sample_tokens(logits, jax.random.PRNGKey(0), 1.0, top_p))
        assert set(drawn.tolist()) == nucleus
        kept = probs[sorted(nucleus)] / probs[sorted(nucleus)].sum()
        freq = np.bincount(drawn, minlength=4)[sorted(nucleus)] / len(drawn)
        np.testing.assert_allclose(freq, kept, atol=0.03)
    assert (np.asarray(sample_tokens(logits, jax.random.PRNGKey(0), 0.0, 0.5)) == 0).all()


def test_prompts_in_one_length_bucket_compile_once(loaded):
    from vlm_jax.inference.generation import _generate

    llava, params, _ = loaded
    before = _generate._cache_size()
    for n in (9, 12, 16):  # one bucket (16)
        ids, seg = left_pad([[1] + [5] * (n - 1), [1, 6]])
        generate(llava, params, ids, seg, None, None, max_new_tokens=3, eos_token_id=-1, pack_prefill=False)
    assert _generate._cache_size() == before + 1
    for n in (9, 12, 14):  # packed: one sequence of 16 slots each time (n + 2 tokens)
        ids, seg = left_pad([[1] + [5] * (n - 1), [1, 6]])
        generate(llava, params, ids, seg, None, None, max_new_tokens=3, eos_token_id=-1)
    assert _generate._cache_size() == before + 2


def test_plan_packing_fits_rows_in_order_and_only_when_cheaper():
    from vlm_jax.models.config import LlavaConfig, RopeScaling, TextConfig

    text = dict(vocab_size=1024, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4)
    config = LlavaConfig(text_config=TextConfig(**text))  # generate_bench.py's text model
    for lengths in ([113, 203, 115, 207], [2000, 30, 40, 2000], [10, 11], [4000, 4000] + [100] * 6):
        plan = plan_packing(config, lengths, bucket_length(max(lengths)))
        assert plan.length % 8 == 0 and plan.num_rows < len(lengths)
        for i in range(plan.num_rows):  # each sequence's rows sit back to back, in their original order
            members = np.flatnonzero(plan.row == i)
            ends = plan.offset[members] + np.asarray(lengths)[members]
            assert plan.offset[members[0]] == 0 and (plan.offset[members[1:]] == ends[:-1]).all()
            assert ends[-1] <= plan.length
    assert plan_packing(config, [500] * 8, 512) is None  # no padding to save
    assert plan_packing(config, [300], 320) is None
    # dynamic NTK RoPE scales by each sequence's last position: never packed
    dynamic = TextConfig(**text, rope_scaling=RopeScaling(rope_type="dynamic", factor=2.0))
    assert plan_packing(LlavaConfig(text_config=dynamic), [10, 11], 16) is None


def test_bucket_length_bounds_padding():
    lengths = [bucket_length(n) for n in range(1, 3000)]
    assert all(b >= n and b % 8 == 0 and b <= max(16, 1.25 * n + 8) for n, b in zip(range(1, 3000), lengths))
    assert lengths == sorted(lengths) and len(set(lengths)) < 40


def test_bad_inputs_fail_with_clear_errors(setup, loaded, capsys, tmp_path):
    root, _, images = setup
    llava, params, pixels = loaded
    base = ["--ckpt", str(root / "ckpt"), "--image", str(images[0]), "--max-new-tokens", "2"]
    cases = [  # usage errors (the arguments disagree) exit 2, bad inputs (files, ids) exit 1
        (base + ["--input-ids", f"1,{IMG},5,{IMG}"], "mark 2 images but 1 --image", 2),
        (base + ["--input-ids", f"1,{IMG},{IMG}"], "a run of 2 image tokens", 2),
        (base + ["--prompt", "w5 <image> w6 <image>"], "2 <image> placeholders but 1 --image", 2),
        (["--ckpt", str(tmp_path / "nope"), "--input-ids", "1,2", "--max-new-tokens", "2"], "no such folder", 1),
        (["--ckpt", str(tmp_path), "--input-ids", "1,2", "--max-new-tokens", "2"], "config.json not found", 1),
        (["--ckpt", str(root / "ckpt"), "--image", str(tmp_path / "x.png"), "--input-ids", f"1,{IMG}",
          "--max-new-tokens", "2"], "x.png: no such file", 1),
    ]
    for argv, message, code in cases:
        assert generate_main(argv) == code
        err = capsys.readouterr().err.strip()
        assert message in err and err.startswith("error: ") and "\n" not in err
    ids, seg, pv, mask = batch_arrays(pixels, ROWS[:2], ROW_IMAGES[:2])
    mask[1, 1] = True
    with pytest.raises(ValueError, match="row 1 has 4 image tokens .* but 2 real images"):
        generate(llava, params, ids, seg, pv, mask, max_new_tokens=2, eos_token_id=2)
