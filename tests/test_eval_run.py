"""The few-shot evaluation run path on a tiny random LLaVA saved as a vlm_jax orbax checkpoint, a tiny random
Hugging Face CLIPModel folder (the original's RICES encoder) and a tiny OK-VQA-format benchmark folder built
here: the CLI writes per-question records + scores with every setting (the `score` form agrees), RICES
retrieves over the whole demo split and puts an identical image last, the HF CLIP embedding equals
transformers' `get_image_features`, a killed run resumes from its predictions file, 8 simulated devices give
the same predictions in the same order as 1 (11 questions), and the multi-host shards cover the questions
exactly once."""
from __future__ import annotations

import dataclasses
import io
import json
from contextlib import redirect_stdout

import jax
import numpy as np
import pytest
from PIL import Image

from vlm_jax.checkpoint import load_config, load_params, load_vision_tower, save_params
from vlm_jax.models.init import random_params
from vlm_jax.evaluate.__main__ import main as evaluate_main
from vlm_jax.evaluate.clip_embed import checkpoint_embedder, hf_clip_embedder
from vlm_jax.evaluate.pixels import load_pixels
from vlm_jax.evaluate.rices import embed_images, rices_indices
from vlm_jax.evaluate.run import run_evaluation
from vlm_jax.evaluate.__main__ import parse
from vlm_jax.models.clip import CLIPVisionTower
from vlm_jax.models.config import preset

N_TRAIN, N_VAL = 6, 11
WORDS = ["red", "cat", "two", "yes", "tree", "blue sky", "dog", "no"]


def tiny_config():
    """The tiny preset with ByteTokenizer's vocabulary (260 ids, its image token 3)."""
    cfg = preset("tiny")
    return dataclasses.replace(cfg, text_config=dataclasses.replace(cfg.text_config, vocab_size=260),
                               image_token_id=3)


def write_image(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (20 + seed % 5 * 4, 28, 3), dtype=np.uint8)).save(path)


def write_split(root, name, n, seed):
    """VQA-format questions/annotations + images; question text length varies so prompts fall in buckets."""
    (root / name).mkdir()
    rng = np.random.default_rng(seed)
    questions, annotations = [], []
    for i in range(n):
        qid = seed * 1000 + i
        write_image(root / name / f"{qid}.png", seed * 100 + i)
        questions.append({"image_id": str(qid), "image": f"{qid}.png", "question_id": qid,
                          "question": "what is " + " and ".join(rng.choice(WORDS, 1 + i % 7)) + "?"})
        answers = [{"answer": str(rng.choice(WORDS))} for _ in range(10)]
        annotations.append({"question_id": qid, "answers": answers})
    (root / f"{name}_questions.json").write_text(json.dumps({"questions": questions}))
    (root / f"{name}_annotations.json").write_text(json.dumps({"annotations": annotations}))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    cfg = tiny_config()
    save_params(root / "ckpt", random_params(cfg, seed=0, std=0.2), cfg)
    write_split(root, "train", N_TRAIN, seed=1)
    write_split(root, "val", N_VAL, seed=2)
    # val question 3 shows exactly train image 4: RICES must put train question 4 last (nearest the query)
    (root / "val" / "2003.png").write_bytes((root / "train" / "1004.png").read_bytes())
    write_hf_clip(root / "clip")
    return root


def write_hf_clip(path):
    """A tiny random transformers CLIPModel (28 px, projection 16) saved as safetensors."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=28, patch_size=14),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         vocab_size=50, bos_token_id=0, eos_token_id=1, pad_token_id=1), projection_dim=16)).eval()
    clip.save_pretrained(path)
    return clip


def cli_args(root, out, *extra):
    split = lambda name: [f"--config.{s}.questions_path={root}/{name}_questions.json",  # noqa: E731
                          f"--config.{s}.annotations_path={root}/{name}_annotations.json",
                          f"--config.{s}.image_dir={root}/{name}"]
    s = "eval_split"
    args = split("val")
    s = "demo_split"
    args += split("train")
    return ["--config", "configs/eval/okvqa.py", "--ckpt", str(root / "ckpt"), *args, "--config.tokenizer=byte",
            "--config.dtype=float32", "--config.max_new_tokens=5", "--config.batch_size=4",
            f"--config.rices.clip_path={root / 'clip'}", f"--config.output_dir={out}", *extra]


@pytest.fixture(scope="module")
def cli_run(setup):
    out = setup / "out"
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        assert evaluate_main(cli_args(setup, out, "--config.shots=2")) == 0
    return out, json.loads(stdout.getvalue())


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_writes_predictions_and_scores(setup, cli_run):
    out, printed = cli_run
    records = read_jsonl(out / "okvqa_2shot_rices.predictions.jsonl")
    annotations = {str(a["question_id"]): a
                   for a in json.loads((setup / "val_annotations.json").read_text())["annotations"]}
    val = json.loads((setup / "val_questions.json").read_text())["questions"]
    assert [r["question_id"] for r in records] == [str(q["question_id"]) for q in val]  # question order, all once
    for r, q in zip(records, val):
        assert r["prompt"].count("<image>") == 3 and r["prompt"].endswith(f"{q['question']}\n"
                                                                           "Answer the question using a single word or phrase. ASSISTANT:")
        assert len(r["demo_ids"]) == 2 and all(d.startswith("100") for d in r["demo_ids"])
        assert isinstance(r["answer"], str) and isinstance(r["extracted"], str) and 0 <= r["score"] <= 1
        assert r["ground_truth"] == [a["answer"] for a in annotations[r["question_id"]]["answers"]]
    assert records[3]["demo_ids"][-1] == "1004"
    assert len({r["answer"] for r in records}) > 1  # the random model does produce varied text
    scores = json.loads((out / "okvqa_2shot_rices.scores.json").read_text())
    assert scores == printed and scores["count"] == N_VAL and scores["missing"] == 0
    assert scores["accuracy"] == pytest.approx(100 * np.mean([r["score"] for r in records]))
    settings = scores["settings"]
    assert (settings["protocol"], settings["shots"], settings["demo_selection"], settings["rices_encoder"],
            settings["dtype"], settings["seed"], settings["pool_size"]) == ("original", 2, "rices", "clip",
                                                                             "float32", 42, N_TRAIN)
    assert settings["vlm_jax_version"] and settings["date"][:2] == "20" and scores["scorer"] == "okvqa_eval_original"
    assert settings["config"]["rices"]["clip_path"] == str(setup / "clip") and settings["max_new_tokens"] == 5
    # the score form on the written predictions gives the same accuracy
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        assert evaluate_main(["score", "--config", "configs/eval/okvqa.py", "--predictions",
                              str(out / "okvqa_2shot_rices.predictions.jsonl"),
                              f"--config.eval_split.annotations_path={setup / 'val_annotations.json'}",
                              f"--config.eval_split.questions_path={setup / 'val_questions.json'}"]) == 0
    assert json.loads(stdout.getvalue())["accuracy"] == pytest.approx(scores["accuracy"])
    assert (out / "rices_cache").is_dir() and len(list((out / "rices_cache").iterdir())) == 2


def test_killed_run_resumes_from_its_predictions(setup, cli_run):
    """A predictions file cut after 4 questions (and a torn 5th line) is resumed: only the other 7 questions
    are generated, and the outputs equal the uninterrupted run's."""
    out, printed = cli_run
    full = (out / "okvqa_2shot_rices.predictions.jsonl").read_text().splitlines()
    partial = setup / "partial"
    partial.mkdir()
    kept = [json.dumps({k: v for k, v in json.loads(line).items() if k in ("question_id", "prompt", "answer",
                                                                            "demo_ids")}) for line in full[:4]]
    (partial / "okvqa_2shot_rices.predictions.jsonl").write_text("\n".join(kept) + "\n" + full[4][:25])
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        assert evaluate_main(cli_args(setup, partial, "--config.shots=2")) == 0
    resumed = json.loads(stdout.getvalue())
    assert resumed["resumed"] == 4 and resumed["accuracy"] == pytest.approx(printed["accuracy"])
    assert (partial / "okvqa_2shot_rices.predictions.jsonl").read_text().splitlines() == full
    # a predictions file written with other prompts is not silently mixed in
    (partial / "okvqa_1shot_rices.predictions.jsonl").write_text(full[0] + "\n")
    assert evaluate_main(cli_args(setup, partial, "--config.shots=1")) == 1


def test_hf_clip_encoder_equals_transformers(setup):
    """The original's RICES features: projected CLS of the HF CLIP (`get_image_features`) on images resized and
    centre-cropped (no square padding) as CLIPImageProcessor does, here at the tiny tower's 28 px."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    paths = [str(p) for p in sorted((setup / "train").glob("*.png"))]
    embed, model_id = hf_clip_embedder(setup / "clip", batch_size=4)
    ours = embed(paths)
    clip = CLIPModel.from_pretrained(setup / "clip").eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    with torch.no_grad():
        pixels = processor([Image.open(p) for p in paths], return_tensors="pt")["pixel_values"]
        out = clip.get_image_features(pixel_values=pixels)
        theirs = (out.pooler_output if hasattr(out, "pooler_output") else out).numpy()
    assert ours.shape == (len(paths), 16)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert model_id != checkpoint_embedder(setup / "ckpt")[1]


def test_one_device_matches_eight(setup, cli_run):
    assert len(jax.devices()) == 8 and N_VAL % 8
    out, _ = cli_run
    config = parse(cli_args(setup, setup / "out1", "--config.shots=2"), "run").config
    scores = run_evaluation(config, setup / "ckpt", devices=jax.devices()[:1])
    assert scores["devices_per_process"] == 1
    eight = read_jsonl(out / "okvqa_2shot_rices.predictions.jsonl")
    one = read_jsonl(setup / "out1" / "okvqa_2shot_rices.predictions.jsonl")
    assert one == eight


def test_rices_with_flax_clip_finds_identical_image(setup):
    train = sorted((setup / "train").glob("*.png"))
    query = setup / "query.png"
    query.write_bytes(train[2].read_bytes())
    embed_fn, model_id = checkpoint_embedder(setup / "ckpt", batch_size=4)
    pool = embed_images([str(p) for p in train], embed_fn, model_id=model_id)
    top = rices_indices(pool, embed_images([str(query)], embed_fn, model_id=model_id), 3)
    assert top[0, -1] == 2 and 2 not in top[0, :-1]
    # batching (fixed batch, padded last batch) does not change an embedding: compare with the tower alone
    config, params = load_vision_tower(setup / "ckpt")
    direct = CLIPVisionTower(config).apply({"params": params},
                                           load_pixels([str(train[5])], {"image_size": config.image_size})).pooled
    np.testing.assert_allclose(embed_fn([str(p) for p in train])[5], np.asarray(direct)[0], rtol=1e-5, atol=1e-5)


def test_batched_rows_match_one_by_one(setup):
    """A bucketed, left-padded batch with per-row image counts (2, 0, 1 images) on 8 devices gives each row
    what `generate` gives it alone and unpadded; split over 2 simulated processes (`process_slice`) and
    gathered (`gather_rows`), the rows come back in order."""
    from vlm_jax.evaluate.batched_generation import Request, generate_requests
    from vlm_jax.inference.generation import gather_rows, generate, left_pad, local_data_mesh, process_slice
    from vlm_jax.models.llava import Llava

    cfg = tiny_config()
    model, params = Llava(cfg), load_params(setup / "ckpt", sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    images = [str(p) for p in sorted((setup / "train").glob("*.png"))]
    block = [cfg.image_token_id] * cfg.num_image_tokens
    rng = np.random.default_rng(0)
    requests = []
    for i, n_images in enumerate([2, 0, 1]):
        ids = [1] + [int(t) for t in rng.integers(4, 260, (13, 28, 20)[i])]  # 27, 29, 27 tokens: one bucket
        for k in range(n_images):
            ids += block + [int(t) for t in rng.integers(4, 260, 2 + k)]
        requests.append(Request(tuple(ids), tuple(images[i:i + n_images])))
    load = lambda paths: load_pixels(paths, {"image_size": cfg.vision_config.image_size})  # noqa: E731
    mesh = local_data_mesh()
    params_on_mesh = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    run = lambda reqs: generate_requests(model, params_on_mesh, reqs, mesh=mesh, batch_size=4,  # noqa: E731
                                         max_images=3, load_pixels=load, max_new_tokens=4, eos_token_id=2,
                                         pad_token_id=0)
    rows = run(requests)
    for i, r in enumerate(requests):
        ids, seg = left_pad([r.token_ids])
        pixels = load(r.image_paths)[None] if r.image_paths else None
        alone = generate(model, params, ids, seg, pixels, None if pixels is None else np.ones((1, len(r.image_paths)), bool),
                         max_new_tokens=4, eos_token_id=2, pad_token_id=0)
        assert alone.rows()[0] == rows[i], f"request {i}"
    slices = [process_slice(len(requests), p, 2) for p in range(2)]
    local = [run([requests[i] for i in s]) for s in slices]
    packed = []  # what each simulated process contributes to the all-gather

    class Captured(Exception):
        pass

    def capture(x):
        packed.append(x)
        raise Captured

    for p in range(2):
        with pytest.raises(Captured):
            gather_rows(local[p], slices[p], len(requests), 4, process_count=2, allgather=capture)
    for p in range(2):
        assert gather_rows(local[p], slices[p], len(requests), 4, process_count=2,
                           allgather=lambda x: np.stack(packed)) == rows


def test_eight_shots_switch_the_language_model_to_dynamic_ntk_rope(setup):
    """As the original's loader (`llama_use_rope_scaling=args.shots >= 8`): dynamic NTK, factor 3, from 8 shots."""
    from vlm_jax.evaluate.run import model_config_for_run
    from vlm_jax.models.config import RopeScaling

    config = parse(cli_args(setup, setup / "out8", "--config.shots=8"), "run").config
    assert model_config_for_run(config, setup / "ckpt").text_config.rope_scaling == \
        RopeScaling(rope_type="dynamic", factor=3.0)
    config.shots = 4  # the checkpoint's own RoPE (the tiny preset's is Llama-3 scaled)
    own = load_config(setup / "ckpt").text_config.rope_scaling
    assert model_config_for_run(config, setup / "ckpt").text_config.rope_scaling == own != RopeScaling(rope_type="dynamic", factor=3.0)
    config.rope_scaling = "dynamic"
    assert model_config_for_run(config, setup / "ckpt").text_config.rope_scaling.rope_type == "dynamic"
