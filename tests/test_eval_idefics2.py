"""`python -m vlm_jax.evaluate` on an Idefics2 checkpoint runs the original's Idefics2 few-shot protocol: the same
`random.seed(0)` demonstrations from the evaluated split for every query, the original's prompt string (built
here as `training_idefics/evaluation/eval_okvqa.py` + `utils.make_prompt` build it), the checkpoint's
preprocessor sizes, greedy 64 tokens, the first line as the answer — equal to transformers' processor + generate."""
import json
import random

import torch
from PIL import Image

from test_eval_run import write_split
from test_generate_idefics2 import save_tokenizer
from test_models_idefics2 import load
from vlm_jax.convert.__main__ import main as convert_main
from vlm_jax.evaluate.__main__ import main as evaluate_main


def original_prompt(questions, annotations, idx, shots):
    """eval_okvqa.py's prompt for question `idx` (make_prompt with image_token '<image>')."""
    make_prompt = lambda q, a="": (f"Image:<image>Question: {q} Answer: {a}\n" if a  # noqa: E731
                                   else f"Image:<image>Question: {q} Answer:")
    random.seed(0)
    indices = random.sample(range(len(questions)), shots)
    shots_text = "".join(make_prompt(questions[i]["question"], annotations[i]["answers"][0]["answer"])
                         for i in indices)
    prefix = "<s>Instruction: provide an answer to the question. Use the image to answer.\n"
    return prefix + shots_text + make_prompt(questions[idx]["question"]), indices


def test_idefics2_checkpoint_runs_the_original_protocol(tmp_path):
    from transformers import AutoTokenizer, Idefics2ImageProcessorPil, Idefics2Processor

    hf, cfg, _ = load()
    hf.save_pretrained(tmp_path / "hf")
    save_tokenizer(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "Idefics2ImageProcessor", "size": {"longest_edge": 56, "shortest_edge": 28}}))
    assert convert_main(["hf-to-orbax", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    write_split(tmp_path, "val", 7, seed=2)
    split = [f"--config.{s}.{k}={tmp_path}/{v}" for s in ("eval_split", "demo_split")
             for k, v in (("questions_path", "val_questions.json"), ("annotations_path", "val_annotations.json"),
                          ("image_dir", "val"))]
    out = tmp_path / "out"
    assert evaluate_main(["--config", "configs/eval/okvqa.py", "--ckpt", str(tmp_path / "ckpt"), *split,
                          "--config.shots=2", "--config.num_queries=2", "--config.dtype=float32",
                          f"--config.output_dir={out}"]) == 0
    records = [json.loads(line) for line in (out / "okvqa_2shot_rices.predictions.jsonl").read_text().splitlines()]
    questions = json.loads((tmp_path / "val_questions.json").read_text())["questions"]
    annotations = json.loads((tmp_path / "val_annotations.json").read_text())["annotations"]
    processor = Idefics2Processor(Idefics2ImageProcessorPil(do_image_splitting=False,
                                                            size={"longest_edge": 56, "shortest_edge": 28}),
                                  AutoTokenizer.from_pretrained(tmp_path / "hf"), image_seq_len=cfg.num_image_tokens)
    assert len(records) == 2
    for idx, record in enumerate(records):
        prompt, indices = original_prompt(questions, annotations, idx, 2)
        assert record["prompt"] == prompt
        assert record["demo_ids"] == [str(questions[i]["question_id"]) for i in indices]
        images = [Image.open(tmp_path / "val" / questions[i]["image"]) for i in indices + [idx]]
        inputs = processor(text=[prompt], images=[images], padding=False, return_tensors="pt")
        with torch.no_grad():
            ids = hf.generate(**inputs, max_new_tokens=64, do_sample=False, pad_token_id=0)
        text = processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        assert record["output_text"] == text and record["answer"] == text.split("\n")[0].strip()
    scores = json.loads((out / "okvqa_2shot_rices.scores.json").read_text())
    assert scores["settings"]["image_sizes"] == [56, 28] and scores["settings"]["max_new_tokens"] == 64
