"""Greedy generation of an Idefics2 (tiny random transformers model, weights copied) equals transformers'
`generate`: a batch of two left-padded prompts, the first with two images of different sizes (padded, with a
pixel attention mask), longer than Mistral's sliding window."""
import numpy as np
import torch

import hf_tiny
from test_models_idefics2 import image_block, images, load
from vlm_jax.inference.generation import generate, left_pad
from vlm_jax.models import idefics2

NEW = 12


def test_greedy_generation_with_two_image_sizes_equals_transformers():
    hf, cfg, params = load()
    block = image_block(cfg)
    rows = [[1, 5, 6] + block + [7, 8] + block + [9, 10], [1, 20, 21] + block + [22]]
    hf_pixels, hf_mask, pixels, mask, image_mask = images(seed=4)
    want = []
    for r, row in enumerate(rows):
        n = int(image_mask[r].sum())
        with torch.no_grad():
            out = hf.generate(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                              pixel_values=hf_pixels[r:r + 1, :n], pixel_attention_mask=hf_mask[r:r + 1, :n],
                              max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0)
        want.append(out[0, len(row):].tolist())
    ids, seg = left_pad(rows)
    got = generate(idefics2.Idefics2(cfg), params, ids, seg, pixels, image_mask, max_new_tokens=NEW,
                   eos_token_id=cfg.text_config.vocab_size + 1, pad_token_id=0, pixel_attention_mask=mask)
    assert got.rows() == want
    assert len(set(map(tuple, want))) == 2 and len(set(want[0])) > 2  # not a degenerate repetition


def save_tokenizer(path):
    """Whitespace word-level tokenizer of the tiny vocabulary: `w5` is id 5; the fake and image tokens special."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    cfg = hf_tiny.idefics2_config()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, hf_tiny.IDEFICS2_FAKE_TOKEN)}}
    vocab.update({"<fake_token_around_image>": hf_tiny.IDEFICS2_FAKE_TOKEN, "<image>": cfg.image_token_id})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            additional_special_tokens=["<fake_token_around_image>", "<image>"]).save_pretrained(path)


def test_cli_with_idefics2_processor_equals_transformers(tmp_path, capsys):
    """`python -m vlm_jax.generate` on an Idefics2 checkpoint: two images of other aspect ratios resized as the
    original configured the processor (longest 560 / shortest 336), the prompt expanded and tokenized; equals
    transformers' Idefics2Processor + generate."""
    import json

    from PIL import Image
    from transformers import Idefics2ImageProcessorPil, Idefics2Processor

    from vlm_jax.convert.__main__ import main as convert_main
    from vlm_jax.generate import main as generate_main

    hf, cfg, _ = load()
    hf.save_pretrained(tmp_path / "hf")
    save_tokenizer(tmp_path / "hf")
    assert convert_main(["hf-to-orbax", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    capsys.readouterr()
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(700, 400), (200, 500)]):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    prompt = "w5 w6 <image> w7 w8 <image> w9 w10"
    args = ["--ckpt", str(tmp_path / "ckpt"), "--prompt", prompt, "--image", str(paths[0]), "--image", str(paths[1]),
            "--max-new-tokens", str(NEW), "--json"]
    assert generate_main(args) == 0
    got = json.loads(capsys.readouterr().out)

    from transformers import AutoTokenizer

    processor = Idefics2Processor(Idefics2ImageProcessorPil(do_image_splitting=False,
                                                            size={"longest_edge": 560, "shortest_edge": 336}),
                                  AutoTokenizer.from_pretrained(tmp_path / "hf"), image_seq_len=cfg.num_image_tokens)
    inputs = processor(text=[prompt], images=[[Image.open(p) for p in paths]], return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (500, 560)  # h x w: 400x700 -> 336x560, 500x200 -> 500x336
    with torch.no_grad():
        out = hf.generate(**inputs, max_new_tokens=NEW, do_sample=False, eos_token_id=2, pad_token_id=0)
    want = out[0, inputs["input_ids"].shape[1]:].tolist()
    if 2 in want:
        want = want[:want.index(2) + 1]
    assert got["token_ids"] == want
    # the inference handle serves the same checkpoint the same way (its processor, images and pixel mask)
    import vlm_jax

    vlm = vlm_jax.load(tmp_path / "ckpt")
    assert vlm.generate(prompt, [str(p) for p in paths], max_new_tokens=NEW)["token_ids"] == want
    two = vlm.generate([prompt, "w9 <image> w5"], [[str(p) for p in paths], [str(paths[1])]], max_new_tokens=NEW)
    assert two[0]["token_ids"] == want  # batched with a shorter prompt and other image sizes: left padding


def test_processor_images_and_prompt_expansion_equal_transformers():
    from PIL import Image
    from transformers import Idefics2ImageProcessorPil

    from vlm_jax.data import idefics2_processor as proc

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
              [(400, 700), (1200, 300), (100, 120), (600, 600)]]
    for longest, shortest in (proc.SIZES["default"], proc.SIZES["high_res"]):
        hf = Idefics2ImageProcessorPil(do_image_splitting=False,
                                       size={"longest_edge": longest, "shortest_edge": shortest})
        want = hf(images=[images[:2], images[2:]], return_tensors="np")
        pixels, mask, image_mask = proc.pad_images([[proc.preprocess_image(im, longest, shortest) for im in row]
                                                    for row in (images[:2], images[2:])])
        np.testing.assert_allclose(pixels.transpose(0, 1, 4, 2, 3), want["pixel_values"], atol=1e-6, rtol=0)
        np.testing.assert_array_equal(mask, want["pixel_attention_mask"].astype(bool))
        assert image_mask.all()
    assert proc.resize_size(400, 700, 560, 336) == (336, 560) and proc.resize_size(1200, 300, 980, 336) == (980, 336)
    block = "<fake_token_around_image>" + "<image>" * 2 + "<fake_token_around_image>"
    assert proc.expand_prompt("a<image><image>b", 2) == "a" + block + block[len("<fake_token_around_image>"):] + "b"
    assert proc.expand_prompt("Image:<image>Question", 2, space_after_image=True) == "Image:" + block + " Question"
