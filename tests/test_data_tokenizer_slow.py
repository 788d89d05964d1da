"""Token ids equal the original's slow Llama tokenizer, offline: a SentencePiece model is trained here, the
reference is transformers' slow (SentencePiece) tokenizer with the `LlamaTokenizer.tokenize` of transformers
4.36.2 (the original's version) and `legacy=False`, `<image>` added as a special token as the original does
(`train_interleaved.py:1597`), and our `HFTokenizer` reads a fast tokenizer folder made from the same model."""

import io
import re

import pytest
import sentencepiece as spm
from transformers import LlamaTokenizer
from transformers.tokenization_utils_sentencepiece import SPIECE_UNDERLINE, SentencePieceBackend

from data_prep.stats import count_tokens
from vlm_jax.data.tokenizer import IGNORE_INDEX, HFTokenizer, tokenize_interleaved
from vlm_jax.evaluate.prompt_tokens import prompt_token_ids

TRAIN_TEXT = [
    "The cat sat on the mat.", "A lecture about triangles and their angles, 180 degrees in all.",
    "USER: What is in the image? ASSISTANT: a cat", "Numbers 12345 and 3.14 appear in the slides.",
    "Über naïve café: unicode text.", "  leading spaces and\nnew lines\n", "Today we learn the theorem of Pythagoras.",
]
N_IMG = 3  # image tokens per placeholder in the expanded form


class SlowLlamaTokenizer(SentencePieceBackend):
    """transformers' slow SentencePiece tokenizer plus `LlamaTokenizer.tokenize` and BOS as in 4.36.2."""

    vocab_files_names = {"vocab_file": "tokenizer.model"}

    def __init__(self, vocab_file, legacy=False):
        super().__init__(vocab_file=vocab_file, unk_token="<unk>", bos_token="<s>", eos_token="</s>", legacy=legacy)

    def tokenize(self, text, add_special_tokens=False, **kwargs):  # transformers 4.36.2 tokenization_llama.py:240
        if self.legacy or len(text) == 0:
            return super().tokenize(text, **kwargs)
        tokens = super().tokenize(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "), **kwargs)
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
            tokens = tokens[1:]
        return tokens

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):  # add_bos_token, no EOS
        return [self.bos_token_id] + token_ids_0


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """(slow reference, ours from a legacy=False folder, ours from a legacy=True folder)."""
    root = tmp_path_factory.mktemp("spm")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(  # Llama's normalizer settings: identity, dummy prefix, whitespace kept
        sentence_iterator=iter(TRAIN_TEXT * 10), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        allow_whitespace_only_pieces=True, minloglevel=2)
    (root / "tokenizer.model").write_bytes(model.getvalue())
    slow = SlowLlamaTokenizer(str(root / "tokenizer.model"))
    slow.add_special_tokens({"additional_special_tokens": ["<image>"]})
    ours = []
    for legacy in (False, True):
        folder = root / f"fast_legacy_{legacy}"
        fast = LlamaTokenizer.from_pretrained(str(root), legacy=legacy)
        fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
        fast.save_pretrained(str(folder))
        ours.append(HFTokenizer(str(folder)))
    assert slow.convert_tokens_to_ids("<image>") == ours[0].image_token_id == ours[1].image_token_id == 400
    return slow, ours


def _original_string(texts, max_images):
    """`ObelicsFormatDataset.getitem` (datasets.py:411-426): the document as one string."""
    texts, n = list(texts), 0
    for i in range(len(texts)):
        if texts[i] is None:
            n += 1
            texts[i] = "<image>" if n <= max_images else None
    text = " ".join(t for t in texts if t) + "</s>"
    text = text.replace("<image> ", "<image>").replace(" <image>", "<image>")
    return re.sub(r"(<image>)+", lambda m: " ".join("<image>" for _ in range(m.group(0).count("<image>"))), text)


def _expand(ids, image_id):
    return [x for i in ids for x in ([image_id] * N_IMG if i == image_id else [i])]


DOCUMENTS = [
    [None, "The cat sat on the mat.", None, "A lecture about triangles."],  # image first: no lone prefix piece
    ["Today we learn", None, "the theorem of Pythagoras.", None, None, "180 degrees"],  # adjacent images
    [" leading spaces", None, "and\nnew lines\n", None, "  two spaces"],  # text0 starting with a space
    ["Über naïve", None, "café", None, "12345 and 3.14", None, "odd \u2581piece"],  # unicode, digits, literal ▁
    [None, None, None, "USER: What is in the image?", None, ""],  # empty pieces, 4 images with max 3 kept
]


@pytest.mark.parametrize("doc", range(len(DOCUMENTS)))
def test_training_documents_match_the_slow_llama_tokenizer(tokenizers, doc):
    slow, ours = tokenizers
    texts = DOCUMENTS[doc]
    reference = _expand(slow(_original_string(texts, max_images=3))["input_ids"], 400)
    for tok in ours:
        got = tokenize_interleaved(texts, tok, image_token_id=400, num_image_tokens=N_IMG, max_images=3,
                                   max_length=10_000)
        assert got.input_ids.tolist() == reference
        assert count_tokens(texts, tok, N_IMG, max_images=3)["tokens"] == len(reference)  # corpus stats agree
        first = reference.index(400)
        assert got.labels.tolist()[:first] == [IGNORE_INDEX] * first


def test_the_difference_is_real(tokenizers):
    """Per-piece encoding with a prefix space (vlm_jax before) differs from the original after `<image>`."""
    slow, (tok, _) = tokenizers
    assert slow.convert_ids_to_tokens(slow("<image>The cat</s>")["input_ids"])[2] == "T"  # no '▁'
    assert tok.encode("The")[0] != tok.encode_continuation("The")[0]
    assert tok.encode(" leading") == slow(" leading")["input_ids"][1:]  # '▁', '▁lea'...: the prefix stays


def _tokenizer_image_token(prompt, slow, image_id):
    """`llava/mm_utils.py:193-212` (the original's prompt tokenization), image index = `image_id`."""
    chunks = [slow(chunk).input_ids for chunk in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == slow.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    separated = [e for sub in zip(chunks, [[image_id] * (offset + 1)] * len(chunks)) for e in sub][:-1]
    for x in separated:
        ids.extend(x[offset:])
    return ids


def test_few_shot_prompts_match_the_original(tokenizers):
    slow, ours = tokenizers
    system = "A chat between a curious human and an artificial intelligence assistant."
    prompts = [
        f"{system} USER: <image>\nWhat is in the image? ASSISTANT: a cat</s>USER: <image>\nWhat is in the image? "
        "ASSISTANT:",
        f"{system} USER: <image>\nQuestion: 12345 + 3.14? ASSISTANT: 12348.14</s>USER: <image>\n"
        "Today we learn</s>USER: <image>\n Über? ASSISTANT:",
    ]
    for prompt in prompts:
        reference = [x for i in _tokenizer_image_token(prompt, slow, 400)
                     for x in ([400] * N_IMG if i == 400 else [i])]
        for tok in ours:
            assert prompt_token_ids(prompt, tok, 400, N_IMG) == reference
