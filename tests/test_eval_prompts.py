"""Few-shot prompts equal the strings LLaVA's `conv_llava_v1.get_prompt()` gives for the seeds' messages,
written out by hand here (system + " ", "USER: msg" + " ", "ASSISTANT: ans" + "</s>", open "ASSISTANT:")."""
import json

import pytest
from eval_shared_data import shared_data_dir

from vlm_jax.evaluate.data_math import load_mathvista
from vlm_jax.evaluate.examples import Example
from vlm_jax.evaluate.prompts import build_prompt, turn_text

SHARED = shared_data_dir()
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")


def vqa(qid, question, answers, image):
    return Example(qid=qid, image_path=image, question_text=question, answers=answers, meta={"benchmark": "okvqa"})


def test_zero_shot_vqa():
    query = vqa("3", "What is the man riding?", ("horse",), "q.jpg")
    prompt = build_prompt(query)
    assert prompt.text == (SYSTEM + " USER: <image>\nWhat is the man riding?\n"
                           "Answer the question using a single word or phrase. ASSISTANT:")
    assert prompt.image_paths == ("q.jpg",)


def test_two_shot_vqa():
    d1 = vqa("1", "What animal is this?", ("horse", "pony"), "d1.jpg")
    d2 = vqa("2", "How many people?", ("2", "two"), "d2.jpg")
    query = vqa("3", "What is the man riding?", (), "q.jpg")
    prompt = build_prompt(query, [d1, d2])
    assert prompt.text == (
        SYSTEM
        + " USER: <image>\nWhat animal is this?\nAnswer the question using a single word or phrase."
        + " ASSISTANT: horse</s>"
        + "USER: <image>\nHow many people?\nAnswer the question using a single word or phrase."
        + " ASSISTANT: 2</s>"
        + "USER: <image>\nWhat is the man riding?\nAnswer the question using a single word or phrase."
        + " ASSISTANT:")
    assert prompt.image_paths == ("d1.jpg", "d2.jpg", "q.jpg")
    assert prompt.text.count("<image>") == 3


def test_scienceqa_turns():
    def sqa(qid, question, choices, answer, hint):
        return Example(qid=qid, image_path=f"{qid}.png", question_text=question, answers=(answer,),
                       choices=choices, meta={"benchmark": "scienceqa", "hint": hint})
    demo = sqa("1", "Which animal barks?", ("cat", "dog"), "B", "")
    query = sqa("2", "Which city is the capital of France?", ("Paris", "Rome", "Oslo"), "A", "Look at the map.")
    assert build_prompt(query, [demo]).text == (
        SYSTEM
        + " USER: <image>\nWhich animal barks?\nA. cat\nB. dog\n"
          "Answer with the option's letter from the given choices directly. ASSISTANT: B</s>"
        + "USER: <image>\nContext: Look at the map.\nWhich city is the capital of France?\nA. Paris\nB. Rome\n"
          "C. Oslo\nAnswer with the option's letter from the given choices directly. ASSISTANT:")


def test_mathvista_query_with_mathvision_demonstration():
    mathvista = load_mathvista(str(SHARED / "mathvista_test_mini.json"), image_dir="mv")
    raw = json.loads((SHARED / "mathvista_test_mini.json").read_text())[0]
    demo = Example(qid="27", image_path="images/27.jpg", answers=("B",), choices=("3 m", "4 m"),
                   question_text="How long is the room?\n<image1>",
                   meta={"benchmark": "mathvision", "question_type": "multi_choice"})
    free = Example(qid="4", image_path="images/4.jpg", answers=("6",), question_text="How many digits?\n<image1>",
                   meta={"benchmark": "mathvision", "question_type": "free_form"})
    prompt = build_prompt(mathvista[0], [free, demo])
    assert prompt.text == (
        SYSTEM
        + " USER: <image>\nHint: Please answer the question and provide the final answer at the end.\n"
          "Question: How many digits? ASSISTANT: 6</s>"
        + "USER: <image>\nHint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
          "at the end.\nQuestion: How long is the room?\nChoices:\n(A) 3 m\n(B) 4 m ASSISTANT: B</s>"
        + "USER: <image>\n" + raw["query"] + " ASSISTANT:")
    assert prompt.image_paths == ("images/4.jpg", "images/27.jpg", "mv/1.jpg")


def test_mathverse_uses_query_wo():
    example = Example(qid="1", image_path="i.png", question_text="q", answers=("D",),
                      meta={"benchmark": "mathverse", "query": "Please directly answer the question.\nQuestion: q"})
    assert turn_text(example) == "Please directly answer the question.\nQuestion: q"


def test_placeholder_in_question_is_rejected():
    with pytest.raises(ValueError, match="image placeholder"):
        build_prompt(vqa("7", "What does <image> show?", (), "x.jpg"))
    with pytest.raises(ValueError, match="needs a ground-truth answer"):
        build_prompt(vqa("8", "q?", (), "x.jpg"), [vqa("9", "d?", (), "d.jpg")])
