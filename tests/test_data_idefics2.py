"""Idefics2 training documents: tokens and labels as the original's collator (transformers' Idefics2Processor on
the joined string, labels with pad and `<image>` ignored), truncation that never splits an image block, and
packing of such documents with segment ids."""
import numpy as np
import pytest

from test_generate_idefics2 import save_tokenizer
from vlm_jax.data import idefics2_processor as proc
from vlm_jax.data.packing import document_example
from vlm_jax.data.tokenizer import IGNORE_INDEX

SEQ = 4  # image tokens per image in these tests
PIECES = ["<s>", "Image:", None, "Image:", None, "\nw5 w6 w7", "Image:", None, "\n<s>", "\nw8 w9"]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    save_tokenizer(path)
    return proc.Idefics2Processor(str(path), image_seq_len=SEQ)


def test_tokens_and_labels_equal_the_original_collator(processor, tmp_path):
    from transformers import Idefics2ImageProcessorPil, Idefics2Processor

    text = proc.document_text(PIECES)
    assert text == "<s>Image:<image>Image:<image>\nw5 w6 w7Image:<image>\n<s>\nw8 w9"
    hf = Idefics2Processor(Idefics2ImageProcessorPil(do_image_splitting=False), processor.tokenizer, image_seq_len=SEQ)
    want = hf(text=[text], add_special_tokens=True)["input_ids"][0]
    doc = processor.tokenize_document(PIECES, max_length=1000)
    assert doc.input_ids.tolist() == want and doc.num_images == 3 and not doc.truncated
    assert want[:2] == [1, 1]  # BOS + the string's own <s>, as in the original
    labels = np.asarray(want)
    labels[labels == processor.tokenizer.pad_token_id] = IGNORE_INDEX  # the collator's rule
    labels[labels == processor.image_token_id] = IGNORE_INDEX
    np.testing.assert_array_equal(doc.labels, labels)
    fake = processor.fake_image_token_id
    assert (doc.labels == fake).sum() == 6 and doc.labels[0] == 1  # fake tokens and BOS are trained


@pytest.mark.parametrize("cut", [3, 9, 10, 11, 14, 15, 16, 17, 24, 25, 26])
def test_truncation_never_splits_an_image_block(processor, cut):
    doc = processor.tokenize_document(PIECES, max_length=cut)
    full = processor.tokenize_document(PIECES, max_length=1000)
    first_close = proc._image_blocks(full.input_ids, processor.image_token_id)[0][1]
    assert (doc is None) == (cut <= first_close)  # None iff not even the first block (with its closing fake) fits
    if doc is None:
        return
    ids = doc.input_ids
    assert len(ids) <= cut and ids.tolist() == full.input_ids[:len(ids)].tolist()
    runs = proc._image_blocks(ids, processor.image_token_id)
    assert len(runs) == doc.num_images and all(e - s == SEQ and ids[e] == processor.fake_image_token_id
                                               for s, e in runs)
    assert doc.truncated == (cut < len(full.input_ids))


def test_document_example_keeps_the_label_rule(processor):
    doc = processor.tokenize_document(PIECES, max_length=1000)
    ex = document_example(doc, np.zeros((doc.num_images, 4, 4, 3), np.float32))
    assert ex["loss_mask"][:-1].tolist() == (doc.labels[1:] != IGNORE_INDEX).tolist()
    assert ex["targets"][:-1].tolist() == doc.input_ids[1:].tolist()


def test_truncation_between_adjacent_images_keeps_the_shared_fake_token(processor):
    pieces = ["<s>w5", None, None, "w6"]  # <s><s>w5 <fake> img*4 <fake> img*4 <fake> w6
    full = processor.tokenize_document(pieces, max_length=1000)
    fake = processor.fake_image_token_id
    assert (full.input_ids == fake).sum() == 3
    for cut, n_images, length in ((9, 1, 9), (11, 1, 9), (13, 1, 9), (14, 2, 14)):
        doc = processor.tokenize_document(pieces, max_length=cut)
        assert (doc.num_images, len(doc.input_ids)) == (n_images, length), cut
        assert doc.input_ids[-1] == fake  # ends with the closing (shared) fake token of its last image
