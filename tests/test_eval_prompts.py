"""Few-shot prompts equal the strings LLaVA's `conv_llava_v1.get_prompt()` gives for the messages the original
loaders append, written out by hand here (system + " ", "USER: msg" + " ", "ASSISTANT: ans" + "</s>", open
"ASSISTANT:"), and their segments go to token ids with no string round trip."""
import json

import pytest
from eval_shared_data import shared_data_dir

from vlm_jax.data.tokenizer import ByteTokenizer
from vlm_jax.evaluate.examples import Example
from vlm_jax.evaluate.prompt_tokens import prompt_token_ids
from vlm_jax.evaluate.prompts import EndOfTurn, Image, Text, Turn, build_prompt
from vlm_jax.evaluate.registry import get, turns_for
from vlm_jax.evaluate.visual_math import load_mathvision, load_mathvista
from vlm_jax.evaluate.vqa import load_textvqa

SHARED = shared_data_dir()
MATHVISTA = str(SHARED / "mathvista_test_mini.json")
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
VQA = "Answer the question using a single word or phrase."


def vqa(qid, question, answers, image):
    return Example(qid=qid, image_path=image, question_text=question, answers=answers, meta={"benchmark": "okvqa"})


def prompt(benchmark, query, demos=(), protocol="original", self_first=False):
    return build_prompt(turns_for(get(benchmark), query, list(demos), protocol, self_first))


def test_zero_shot_vqa():
    p = prompt("okvqa", vqa("3", "What is the man riding?", ("horse",), "q.jpg"))
    assert p.render() == SYSTEM + f" USER: <image>\nWhat is the man riding?\n{VQA} ASSISTANT:"
    assert p.image_paths == ("q.jpg",)


def test_two_shot_vqa_segments():
    d1 = vqa("1", "What animal is this?", ("horse", "pony"), "d1.jpg")
    d2 = vqa("2", "How many people?", ("2", "two"), "d2.jpg")
    p = prompt("okvqa", vqa("3", "What is the man riding?", (), "q.jpg"), [d1, d2])
    assert p.segments == (
        Text(SYSTEM + " USER: "), Image("d1.jpg"), Text(f"\nWhat animal is this?\n{VQA} ASSISTANT: horse"),
        EndOfTurn(), Text("USER: "), Image("d2.jpg"), Text(f"\nHow many people?\n{VQA} ASSISTANT: 2"), EndOfTurn(),
        Text("USER: "), Image("q.jpg"), Text(f"\nWhat is the man riding?\n{VQA} ASSISTANT:"))
    assert p.image_paths == ("d1.jpg", "d2.jpg", "q.jpg")


def test_segments_to_token_ids_without_placeholder_round_trip():
    """A literal "<image>" or "</s>" in a question stays text; only Image / EndOfTurn segments become the image
    block and EOS (ByteTokenizer: id = byte + 4, BOS 1, EOS 2)."""
    b = lambda text: [x + 4 for x in text.encode()]  # noqa: E731
    p = build_prompt([Turn("d.jpg", "q", "a"), Turn("x.jpg", "What does <image> say </s>?")])
    ids = prompt_token_ids(p, ByteTokenizer(), image_token_id=9, num_image_tokens=3)
    assert ids == ([1] + b(SYSTEM + " USER: ") + [9] * 3 + b("\nq ASSISTANT: a") + [2] + b("USER: ") + [9] * 3
                   + b("\nWhat does <image> say </s>? ASSISTANT:"))


def test_textvqa_ocr_turns(tmp_path):
    """The original's OCR dataset: demonstrations capitalise the question and add "Reference OCR token: t1, t2";
    the query is LLaVA's OCR question-file form (question, OCR line, instruction)."""
    data = {"data": [{"question_id": 1, "image_id": "a", "question": "what brand?", "answers": ["nike"] * 10},
                     {"question_id": 2, "image_id": "b", "question": "which year?", "answers": ["1990"] * 10}]}
    ocr = {"data": [{"image_id": "a", "ocr_tokens": ["NIKE", "just"]}, {"image_id": "b", "ocr_tokens": []}]}
    (tmp_path / "q.json").write_text(json.dumps(data))
    (tmp_path / "ocr.json").write_text(json.dumps(ocr))
    demo, query = load_textvqa(str(tmp_path / "q.json"), "img", str(tmp_path / "ocr.json"), "textvqa_ocr")
    assert prompt("textvqa_ocr", query, [demo]).render() == (
        SYSTEM + f" USER: <image>\nWhat brand?\nReference OCR token: NIKE, just\n{VQA} ASSISTANT: nike</s>"
        f"USER: <image>\nwhich year?\nReference OCR token: \n{VQA} ASSISTANT:")


@pytest.fixture(scope="module")
def mathvista():
    return {e.qid: e for e in load_mathvista(MATHVISTA, image_dir="mv")}


def _mathvision(tmp_path):
    rows = [{"id": "27", "question": "How long is the room?\n<image1>", "options": ["3 m", "4 m"], "answer": "B",
             "image": "images/27.jpg", "level": 2, "subject": "metric"},
            {"id": "4", "question": "How many digits?\n<image1>", "options": [], "answer": "6",
             "image": "images/4.jpg", "level": 1, "subject": "counting"}]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {e.qid: e for e in load_mathvision(str(path))}


def test_mathvista_query_with_mathvision_demonstrations(mathvista, tmp_path):
    """Original: the MathVista loader writes pool items as "Question: " + query with the raw answer; standard:
    each example in its own layout."""
    mv = _mathvision(tmp_path)
    free_query = ("Hint: Please answer the question and provide the final answer at the end.\n"
                  "Question: How many digits?")
    mc_query = ("Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the "
                "end.\nQuestion: How long is the room?\nChoices:\n(A) 3 m\n(B) 4 m")
    raw = json.loads(open(MATHVISTA).read())[0]
    assert prompt("mathvista", mathvista["1"], [mv["4"], mv["27"]]).render() == (
        SYSTEM + f" USER: <image>\nQuestion: {free_query} ASSISTANT: 6</s>"
        f"USER: <image>\nQuestion: {mc_query} ASSISTANT: B</s>USER: <image>\n{raw['query']} ASSISTANT:")
    assert prompt("mathvista", mathvista["1"], [mv["4"]], "standard").render() == (
        SYSTEM + f" USER: <image>\n{free_query} ASSISTANT: 6</s>USER: <image>\n{raw['query']} ASSISTANT:")


def test_mathvision_query_with_mathvista_demonstration_answers_option_text(mathvista, tmp_path):
    """Original: a MATH-Vision run writes MathVista pool items as their query with the RAW answer (the option
    text "145°" of pid 3, not its letter); standard answers with the letter."""
    query = _mathvision(tmp_path)["27"]
    demo = mathvista["3"]
    text = prompt("mathvision", query, [demo]).render()
    assert text.startswith(SYSTEM + f" USER: <image>\n{demo.meta['query']} ASSISTANT: 145°</s>USER: <image>\n")
    assert prompt("mathvision", query, [demo], "standard").render().startswith(
        SYSTEM + f" USER: <image>\n{demo.meta['query']} ASSISTANT: C</s>")


def test_mathverse_query_suffix_and_self_first(tmp_path):
    row = {"sample_index": "1", "problem_index": "1", "problem_version": "Text Lite", "question": "What is x?",
           "image": "1.png", "answer": "5", "question_type": "free-form", "query_wo": "Please answer.\nQuestion: x?",
           "query_cot": "", "metadata": {}}
    path = tmp_path / "testmini.json"
    path.write_text(json.dumps([row, dict(row, sample_index="2", query="Authors' query")]))
    from vlm_jax.evaluate.visual_math import load_mathverse
    a, b = load_mathverse(str(path))
    suffix = ". Please answer the question and provide final value or choices."
    assert prompt("mathverse", a).render().endswith(f"\nPlease answer.\nQuestion: x?{suffix} ASSISTANT:")
    assert prompt("mathverse", b).render().endswith(f"\nAuthors' query{suffix} ASSISTANT:")  # the file's query
    assert prompt("mathverse", a, (), "standard").render().endswith("\nQuestion: x? ASSISTANT:")
    # the include-self ablation writes the query as the original's current_sample, with its raw answer
    assert prompt("mathverse", a, [a], self_first=True).render() == (
        SYSTEM + f" USER: <image>\nPlease answer.\nQuestion: x?{suffix} ASSISTANT: 5</s>"
        f"USER: <image>\nPlease answer.\nQuestion: x?{suffix} ASSISTANT:")


def test_demonstration_needs_an_answer():
    with pytest.raises(ValueError, match="needs a ground-truth answer"):
        prompt("okvqa", vqa("8", "q?", (), "x.jpg"), [vqa("9", "d?", (), "d.jpg")])
