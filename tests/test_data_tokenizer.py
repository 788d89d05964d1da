"""The seed's interleaved tokenization rule: hand-computed layouts and an independent HF reference."""

import re

import numpy as np
import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from vlm_jax.data.packing import document_example
from vlm_jax.data.tokenizer import IGNORE_INDEX, ByteTokenizer, HFTokenizer, tokenize_interleaved

IG = IGNORE_INDEX


def _b(text):  # ByteTokenizer ids of ASCII text, computed by hand: byte value + 4.
    return [ord(c) + 4 for c in text]


def test_byte_tokenizer_roundtrip_and_specials():
    tok = ByteTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.image_token_id, tok.vocab_size) == (0, 1, 2, 3, 260)
    assert tok.encode("Hé") == [72 + 4, 0xC3 + 4, 0xA9 + 4]
    assert tok.decode([1] + tok.encode("a") + [3, 3] + tok.encode("é") + [2, 0]) == "a<image><image>é"


def test_known_document_layout():
    """["Hi", IMG, "cat.", IMG, IMG, "end"] -> seed string "Hi<image>cat.<image> <image>end</s>"."""
    doc = tokenize_interleaved(["Hi", None, "cat.", None, None, "end"], ByteTokenizer(), image_token_id=3,
                               num_image_tokens=3, max_images=12, max_length=100)
    expected_ids = [1, 76, 109, 3, 3, 3, 103, 101, 120, 50, 3, 3, 3, 36, 3, 3, 3, 105, 114, 104, 2]
    assert expected_ids == [1] + _b("Hi") + [3] * 3 + _b("cat.") + [3] * 3 + _b(" ") + [3] * 3 + _b("end") + [2]
    # Loss only after the first image; image tokens never.
    expected_labels = [IG, IG, IG, IG, IG, IG, 103, 101, 120, 50, IG, IG, IG, 36, IG, IG, IG, 105, 114, 104, 2]
    assert doc.input_ids.tolist() == expected_ids
    assert doc.labels.tolist() == expected_labels
    assert (doc.num_images, doc.truncated) == (3, False)
    example = document_example(doc, np.zeros((3, 2, 2, 3), np.float32))
    assert example["targets"].tolist() == expected_ids[1:] + [0]
    # loss_mask[i]: does the token at i+1 carry a label?  The last image token predicts "c".
    assert example["loss_mask"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 0]


def test_spaces_around_placeholders_and_empty_texts():
    """Text around an image loses one adjacent space; empty strings vanish (seed: `if _`)."""
    doc = tokenize_interleaved(["a  ", None, "", " b", None], ByteTokenizer(), image_token_id=3, num_image_tokens=1,
                               max_images=12, max_length=100)
    # "a   <image>  b <image></s>" -> "a  <image> b<image></s>" after removing one space each side.
    assert doc.input_ids.tolist() == [1] + _b("a  ") + [3] + _b(" b") + [3] + [2]


def test_max_images_drops_later_images_and_their_placeholders():
    doc = tokenize_interleaved(["a", None, "b", None, "c", None, "d"], ByteTokenizer(), image_token_id=3,
                               num_image_tokens=2, max_images=2, max_length=100)
    assert doc.num_images == 2
    assert doc.input_ids.tolist() == [1] + _b("a") + [3, 3] + _b("b") + [3, 3] + _b("c d") + [2]


def test_length_budget_never_splits_an_image_block():
    texts = ["ab", None, "cdef", None, "gh"]
    kw = dict(image_token_id=3, num_image_tokens=4, max_images=12)
    full = tokenize_interleaved(texts, ByteTokenizer(), **kw, max_length=100)
    assert len(full.input_ids) == 1 + 2 + 4 + 4 + 4 + 2 + 1 and not full.truncated
    exact = tokenize_interleaved(texts, ByteTokenizer(), **kw, max_length=18)
    assert exact.input_ids.tolist() == full.input_ids.tolist()
    no_eos = tokenize_interleaved(texts, ByteTokenizer(), **kw, max_length=17)  # EOS does not fit: cut, no EOS.
    assert no_eos.input_ids.tolist() == full.input_ids.tolist()[:-1] and no_eos.truncated
    # Budget ends inside the second block: the document stops before it (text before it kept whole).
    for max_length in (11, 12, 13, 14):
        doc = tokenize_interleaved(texts, ByteTokenizer(), **kw, max_length=max_length)
        assert doc.input_ids.tolist() == [1] + _b("ab") + [3] * 4 + _b("cdef")
        assert doc.num_images == 1 and doc.truncated
    cut_text = tokenize_interleaved(texts, ByteTokenizer(), **kw, max_length=9)  # text after block 1 is cut.
    assert cut_text.input_ids.tolist() == [1] + _b("ab") + [3] * 4 + _b("cd")
    assert tokenize_interleaved(texts, ByteTokenizer(), **kw, max_length=6) is None  # first block cannot fit.
    assert tokenize_interleaved(["only text"], ByteTokenizer(), **kw, max_length=100) is None


def _tiny_hf_tokenizer(directory, words):
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<pad>", "<image>"] + sorted(words))}
    raw = RawTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])  # BOS, as Llama.
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>", extra_special_tokens=["<image>"]).save_pretrained(directory)
    return HFTokenizer(str(directory))


def _seed_reference(texts, hf_tok, max_images, num_image_tokens, image_id):
    """The seed's ObelicsFormatDataset + DataCollatorOpenflamingo, rewritten for the expanded form."""
    texts, n = list(texts), 0
    for i, t in enumerate(texts):
        if t is None:
            n += 1
            texts[i] = "<image>" if n <= max_images else None
    text = " ".join(t for t in texts if t) + "</s>"
    text = text.replace("<image> ", "<image>").replace(" <image>", "<image>")
    text = re.sub(r"(<image>)+", lambda m: " ".join("<image>" for _ in range(m.group(0).count("<image>"))), text)
    ids = hf_tok._tok(text)["input_ids"]  # BOS added by the tokenizer, as the seed's Llama tokenizer.
    labels = list(ids)
    first = ids.index(image_id)
    labels[:first] = [IG] * first
    labels = [IG if i == image_id else lab for i, lab in zip(ids, labels)]
    expand = lambda seq, fill: [x for i, lab in zip(ids, seq) for x in ([fill] * num_image_tokens if i == image_id else [lab])]
    return expand(ids, image_id), expand(labels, IG)


def test_hf_tokenizer_matches_seed_reference(tmp_path):
    docs = [
        ["hello world", None, "cat .", None, None, "world hello"],
        [None, "cat", None, "world", None, "hello", None, "cat"],
        ["hello", None, None, None, "cat"],
    ]
    tok = _tiny_hf_tokenizer(tmp_path, ["hello", "world", "cat", "."])
    assert tok.bos_id == 1 and tok.eos_id == 2 and tok.pad_id == 3 and tok.image_token_id == 4
    for texts in docs:
        for max_images in (12, 2):
            ours = tokenize_interleaved(texts, tok, image_token_id=4, num_image_tokens=3, max_images=max_images,
                                        max_length=1000)
            ref_ids, ref_labels = _seed_reference(texts, tok, max_images, 3, 4)
            assert ours.input_ids.tolist() == ref_ids
            assert ours.labels.tolist() == ref_labels


def test_hf_tokenizer_keeps_literal_special_strings_as_text(tmp_path):
    tok = _tiny_hf_tokenizer(tmp_path, ["hello"])
    assert 4 not in tok.encode("hello <image> </s>") and 2 not in tok.encode("hello <image> </s>")


def test_hf_tokenizer_without_eos_is_rejected(tmp_path):
    raw = RawTokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="eos"):
        HFTokenizer(str(tmp_path))
