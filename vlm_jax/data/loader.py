"""Grain training pipeline: converted corpora -> packed, batched, checkpointable batches.

    corpus folders (TFDS ArrayRecord data sources, `vlm_jax.data.records.open_corpora`)
      -> split into `streams` streams: stream s reads records[s::streams]; for each stream of this process:
         -> shuffle(seed) (unless shuffle=False: file order) -> repeat(num_epochs)
         -> DocumentProcessor (record decode, image decode + the family's preprocessing and tokenization:
            LLaVA = CLIP preprocessing + the seed's rule, Idefics2 = the Idefics2 processor + the original
            collator's rule, images zero-padded to one size with a pixel mask; in `num_workers` worker
            processes via mp_prefetch, else in `read_threads` threads)
         -> count-and-drop (loader metrics, in the main process) -> best-fit packing (look-ahead,
            packing="best_fit") or one padded document per row (packing="none", the original's batches)
         -> batch of global_batch / streams rows
      -> the process's streams' batches concatenated in stream order

Streams make the data independent of the number of processes: the global batch is the concatenation of
every stream's next `global_batch / streams` rows in stream order, and process p of P serves streams
[p * streams / P, (p + 1) * streams / P), i.e. exactly its contiguous rows of the global batch. So any
process count that divides `streams` gives the same global batches (the default `streams` = the process
count is the per-process split of earlier versions). Each host reads, decodes and packs only its own
streams (work proportional to its share); the price is that packing looks ahead within a stream only and
the stream count is fixed for a run (see docs/DESIGN.md).

Every step is deterministic given `seed`, and the per-record step is one-to-one, so the batches do
not depend on `num_workers`. Shuffling reshuffles each epoch (Grain folds the epoch into the seed).
The iterator is a `grain.DatasetIterator`: `get_state()`/`set_state()` resume at the exact next
batch; its state is `{"streams": {"<s>": state of stream s}}`, and `vlm_jax.checkpoint.TrainCheckpointer`
saves one file per stream so that a run can resume on another process count.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags as absl_flags
from PIL import Image

from vlm_jax.data import idefics2_processor
from vlm_jax.data.image import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageRejected, check_image_size, preprocess_image,
                                read_processor_settings)
from vlm_jax.data.packing import document_example, pack_documents, pad_documents
from vlm_jax.data import records as corpus_records
from vlm_jax.data.tokenizer import Tokenizer, make_tokenizer, tokenize_interleaved

COUNTS_KEY = "loader_counts"
PACKINGS = ("best_fit", "none")
FAMILIES = ("llava", "idefics2")  # the model family whose tokenization and image preprocessing the loader applies
COUNTER_NAMES = (
    "documents_read",
    "documents_used",
    "documents_truncated",
    "documents_skipped_malformed",  # record bytes that do not decode to a valid document
    "documents_skipped_no_image",  # no image left after skipping corrupt/missing ones
    "documents_skipped_too_long",  # the first image block does not fit in max_length
    "images_used",
    "images_skipped_corrupt",  # bytes that PIL cannot decode
    "images_skipped_missing",  # empty image bytes
    "images_skipped_too_large",  # over the pixel or aspect-ratio limit of vlm_jax.data.image (never decoded)
    "images_dropped",  # beyond max_images or the length budget (not an error)
)


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """Everything `make_train_iterator` needs; plain data (build it from a dict with `from_dict`).

    shards: converted corpus folders (`python -m data_prep.convert --out`), read in this order.
    tokenizer: "byte" for `ByteTokenizer`, else a local HF tokenizer directory.
    image_token_id: defaults to the tokenizer's `<image>` id. max_length defaults to seq_len.
    preprocessor_config: a checkpoint's preprocessor_config.json; when given, its size, crop,
    mean and std replace image_size/crop_size/image_mean/image_std.
    pack_lookahead: documents the best-fit packer looks ahead over (see `vlm_jax.data.packing`).
    shuffle: False reads the records in file order (the original's sequential sampler).
    packing: "best_fit" packs documents into rows; "none" pads each document to its own row.
    num_epochs: None repeats forever (use that, with a step budget, for multi-host training:
    streams may pack different numbers of rows).
    batch_size: this process's rows per batch (the global batch / process_count).
    streams: independent record streams of the whole job (0: process_count); process_count must divide it and
    it must divide batch_size * process_count. num_workers and read_threads are per stream.
    family: "llava" (the seed's tokenization, CLIP images of one size) or "idefics2" (`tokenizer` must be an
    Idefics2 tokenizer folder; the original collator's tokenization, images resized by the Idefics2 processor
    to longest edge <= image_longest_edge and shortest >= image_shortest_edge, zero-padded bottom/right to
    image_longest_edge² with `pixel_attention_mask`; image_size, crop_size, mean, std, image_aspect and
    preprocessor_config are LLaVA's and not read).
    """

    shards: tuple[str, ...]
    batch_size: int
    seq_len: int
    max_images_per_row: int
    num_image_tokens: int
    tokenizer: str = "byte"
    image_token_id: int | None = None
    max_images: int = 12
    max_length: int | None = None
    image_size: int = 336
    crop_size: int | tuple[int, int] | None = None
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    image_aspect: str = "pad"
    preprocessor_config: str | None = None
    seed: int = 0
    num_epochs: int | None = 1
    num_workers: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 2
    pack_lookahead: int = 64
    shuffle: bool = True
    packing: str = "best_fit"
    process_index: int = 0
    process_count: int = 1
    streams: int = 0
    family: str = "llava"
    image_longest_edge: int = idefics2_processor.SIZES["default"][0]
    image_shortest_edge: int = idefics2_processor.SIZES["default"][1]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LoaderConfig:
        """Builds a config from a dict (e.g. an ml_collections config's `to_dict()`); unknown keys fail."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown loader config keys {unknown}; known: {sorted(names)}")
        values = dict(values)
        shards = values["shards"]
        values["shards"] = (shards,) if isinstance(shards, str) else tuple(shards)
        for key in ("image_mean", "image_std"):
            if key in values:
                values[key] = tuple(values[key])
        if isinstance(values.get("crop_size"), list):
            values["crop_size"] = tuple(values["crop_size"])
        return cls(**values)




def _image_settings(config: LoaderConfig) -> dict[str, Any]:
    if config.preprocessor_config is not None:
        settings = read_processor_settings(config.preprocessor_config)
    else:
        settings = {
            "image_size": config.image_size,
            "crop_size": config.crop_size,
            "mean": config.image_mean,
            "std": config.image_std,
        }
    return {**settings, "aspect": config.image_aspect}


class LlavaDocuments:
    """The LLaVA family's document rule: the seed's tokenization (`tokenize_interleaved`), CLIP preprocessing."""

    pixel_mask = False

    def __init__(self, tokenizer: Tokenizer, *, image_token_id: int, num_image_tokens: int, max_images: int,
                 max_length: int, image_settings: Mapping[str, Any]):
        self._tokenizer = tokenizer
        self._tokenize_kwargs = dict(image_token_id=image_token_id, num_image_tokens=num_image_tokens,
                                     max_images=max_images, max_length=max_length)
        self._image_settings = dict(image_settings)

    def tokenize(self, texts: Sequence[str | None]):
        return tokenize_interleaved(texts, self._tokenizer, **self._tokenize_kwargs)

    def image(self, img: Image.Image) -> np.ndarray:
        return preprocess_image(img, **self._image_settings)


class Idefics2Documents:
    """The Idefics2 family's document rule: the original collator's tokenization (`Idefics2Processor.
    tokenize_document`; images past the first `max_images` dropped with their placeholder, as LLaVA's rule does)
    and the processor's resize; `pad_size` is the (height, width) every image is zero-padded to."""

    pixel_mask = True

    def __init__(self, processor: idefics2_processor.Idefics2Processor, *, max_images: int, max_length: int):
        self._processor, self._max_images, self._max_length = processor, max_images, max_length
        self.pad_size = (processor.longest_edge, processor.longest_edge)

    def tokenize(self, texts: Sequence[str | None]):
        kept, n = [], 0
        for t in texts:
            n += t is None
            if t is not None or n <= self._max_images:
                kept.append(t)
        return self._processor.tokenize_document(kept, self._max_length)

    def image(self, img: Image.Image) -> np.ndarray:
        check_image_size(*img.size)
        return idefics2_processor.preprocess_image(img, self._processor.longest_edge, self._processor.shortest_edge)


class DocumentProcessor(grain.transforms.Map):
    """Record bytes -> `{"example": document_example dict | None, "counts": {counter: n}}`, by the family's
    `rule` (`LlavaDocuments` / `Idefics2Documents`).

    Never raises on bad data: an undecodable record drops the document, a corrupt or empty image
    drops that image with its placeholder (the layout is recomputed, so a later image may take its
    place), a document left without images is dropped; each case is counted. Only the images
    whose blocks are kept are decoded.
    """

    def __init__(self, rule: LlavaDocuments | Idefics2Documents):
        self._rule = rule

    def _load_image(self, data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            return self._rule.image(img)

    def map(self, record: bytes) -> dict[str, Any]:
        counts = dict.fromkeys(COUNTER_NAMES, 0)
        counts["documents_read"] = 1
        try:
            doc = corpus_records.decode_document(record)
        except ValueError:
            counts["documents_skipped_malformed"] = 1
            return {"example": None, "counts": counts}
        texts, images = list(doc["texts"]), list(doc["images"])
        total_images = sum(t is None for t in texts)
        pixels: dict[int, np.ndarray] = {}  # keyed by position in the current `texts`/`images`
        while True:  # Each pass either finishes or removes >= 1 image, so this terminates.
            tokenized = self._rule.tokenize(texts)
            if tokenized is None:
                break
            kept = [i for i, t in enumerate(texts) if t is None][: tokenized.num_images]
            failed = []
            for pos in kept:
                if pos in pixels:
                    continue
                if not images[pos]:
                    counts["images_skipped_missing"] += 1
                    failed.append(pos)
                    continue
                try:
                    pixels[pos] = self._load_image(images[pos])
                except ImageRejected:  # over the pixel / aspect-ratio limit: refused from the header
                    counts["images_skipped_too_large"] += 1
                    failed.append(pos)
                except Exception:  # noqa: BLE001 - any decoder failure means a corrupt image: skip and count.
                    counts["images_skipped_corrupt"] += 1
                    failed.append(pos)
            if not failed:
                break
            keep = [i for i in range(len(texts)) if i not in failed]
            remap = {old: new for new, old in enumerate(keep)}
            texts, images = [texts[i] for i in keep], [images[i] for i in keep]
            pixels = {remap[p]: v for p, v in pixels.items()}
        failed_total = (counts["images_skipped_missing"] + counts["images_skipped_corrupt"]
                        + counts["images_skipped_too_large"])
        if tokenized is None:
            no_image_left = not any(t is None for t in texts)
            counts["documents_skipped_no_image" if no_image_left else "documents_skipped_too_long"] = 1
            counts["images_dropped"] = total_images - failed_total
            return {"example": None, "counts": counts}
        counts["documents_used"] = 1
        counts["documents_truncated"] = int(tokenized.truncated)
        counts["images_used"] = tokenized.num_images
        counts["images_dropped"] = total_images - failed_total - tokenized.num_images
        images = [pixels[p] for p in kept]
        if not self._rule.pixel_mask:
            pixel_values = np.stack(images).astype(np.float32, copy=False)
            return {"example": document_example(tokenized, pixel_values), "counts": counts}
        pixel_values, pixel_mask, _ = idefics2_processor.pad_images([images], *self._rule.pad_size)
        return {"example": document_example(tokenized, pixel_values[0], pixel_mask[0]), "counts": counts}


class _CountAndDropIterDataset(grain.IterDataset):
    """Adds each element's counts to running totals (kept in the iterator state), drops empty ones."""

    def __init__(self, parent: grain.IterDataset, max_consecutive_drops: int):
        super().__init__(parent)
        self._max_consecutive_drops = max_consecutive_drops

    def __iter__(self) -> grain.DatasetIterator:
        return _CountAndDropIterator(self._parent.__iter__(), self._max_consecutive_drops)


class _CountAndDropIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, max_consecutive_drops: int):
        super().__init__(parent)
        self._max_consecutive_drops = max_consecutive_drops
        self._counts = dict.fromkeys(COUNTER_NAMES, 0)

    def __next__(self) -> dict[str, np.ndarray]:
        for _ in range(self._max_consecutive_drops):
            element = next(self._parent)
            for name, n in element["counts"].items():
                self._counts[name] += int(n)
            if element["example"] is not None:
                return element["example"]
        raise RuntimeError(
            f"no usable document in {self._max_consecutive_drops} consecutive records (a whole shard "
            f"pass); loader counts so far: {self._counts}"
        )

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), COUNTS_KEY: dict(self._counts)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._counts = {name: int(state[COUNTS_KEY].get(name, 0)) for name in COUNTER_NAMES}


def loader_metrics(iterator_or_state: grain.DatasetIterator | Mapping[str, Any]) -> dict[str, int]:
    """Loader counters (documents read/used/skipped by reason, images used/skipped/dropped), summed over
    this process's streams.

    Read from the iterator state, so they are the counts of everything before the state's resume
    point, also for work done in worker processes, and they survive checkpoint/restore.
    """
    state = iterator_or_state if isinstance(iterator_or_state, Mapping) else iterator_or_state.get_state()
    totals, found = dict.fromkeys(COUNTER_NAMES, 0), False
    pending = [state]
    while pending:
        node = pending.pop()
        if isinstance(node, Mapping):
            if COUNTS_KEY in node:
                found = True
                for name, n in node[COUNTS_KEY].items():
                    totals[name] = totals.get(name, 0) + int(n)
                continue
            pending.extend(node.values())
        elif isinstance(node, (list, tuple)):
            pending.extend(node)
    if not found:
        raise ValueError("state has no loader counts: not an iterator from make_train_iterator")
    return totals


def local_streams(config: LoaderConfig) -> range:
    """The streams this process serves (`LoaderConfig.streams`, 0 = process_count); ValueError when the
    process count does not divide the streams or the streams do not divide the global batch."""
    p, n = config.process_index, config.process_count
    if not 0 <= p < n:
        raise ValueError(f"process_index {p} not in [0, {n})")
    streams = config.streams or n
    if streams % n:
        raise ValueError(f"{streams} data streams cannot be split over {n} processes: the process count must "
                         "divide data.streams")
    if (config.batch_size * n) % streams:
        raise ValueError(f"global batch {config.batch_size * n} is not a multiple of the {streams} data streams")
    per_process = streams // n
    return range(p * per_process, (p + 1) * per_process)


def make_train_dataset(config: LoaderConfig, tokenizer: Tokenizer | None = None) -> grain.IterDataset:
    """The batched Grain IterDataset described in the module docstring (iterate it for batches)."""
    mine = local_streams(config)
    max_length = config.max_length or config.seq_len
    if max_length > config.seq_len:
        raise ValueError(f"max_length {max_length} > seq_len {config.seq_len}")
    if config.max_images > config.max_images_per_row:
        raise ValueError(f"max_images {config.max_images} > max_images_per_row {config.max_images_per_row}")
    if config.packing not in PACKINGS:
        raise ValueError(f"packing={config.packing!r}: expected one of {PACKINGS}")
    tokenizer = tokenizer or make_tokenizer(config.tokenizer)
    image_token_id = config.image_token_id
    if image_token_id is None:
        image_token_id = getattr(tokenizer, "image_token_id", None)
        if image_token_id is None:
            raise ValueError("image_token_id not given and the tokenizer has no <image> token")
    if config.family not in FAMILIES:
        raise ValueError(f"family={config.family!r}: expected one of {FAMILIES}")
    if config.family == "idefics2":
        if config.image_shortest_edge > config.image_longest_edge:
            raise ValueError(f"image_shortest_edge {config.image_shortest_edge} > image_longest_edge "
                             f"{config.image_longest_edge}")
        idefics2 = idefics2_processor.Idefics2Processor(config.tokenizer, config.num_image_tokens,
                                                        config.image_longest_edge, config.image_shortest_edge)
        if idefics2.image_token_id != image_token_id:
            raise ValueError(f"tokenizer {config.tokenizer}: <image> is id {idefics2.image_token_id}, not the "
                             f"model's image_token_id {image_token_id}")
        rule = Idefics2Documents(idefics2, max_images=config.max_images, max_length=max_length)
    else:
        rule = LlavaDocuments(tokenizer, image_token_id=image_token_id, num_image_tokens=config.num_image_tokens,
                              max_images=config.max_images, max_length=max_length,
                              image_settings=_image_settings(config))
    processor = DocumentProcessor(rule)
    source = grain.MapDataset.source(corpus_records.open_corpora(config.shards))
    count = config.streams or config.process_count
    rows_per_stream = config.batch_size * config.process_count // count
    streams = {s: _stream(config, source[s::count], processor, tokenizer.pad_id, f"stream {s}/{count}")
               .batch(rows_per_stream, drop_remainder=True) for s in mine}
    return _ConcatStreamsIterDataset(streams, count)


def _stream(config: LoaderConfig, records: grain.MapDataset, processor: DocumentProcessor, pad_id: int,
            name: str) -> grain.IterDataset:
    """One stream's records -> packed (or padded) rows."""
    if len(records) == 0:
        raise ValueError(f"data {name} has no records (fewer records than streams)")
    if config.shuffle:
        records = records.shuffle(seed=config.seed)
    docs = records.repeat(config.num_epochs).map(processor)
    read_options = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=max(config.read_threads, 1) * 2)
    stream = docs.to_iter_dataset(read_options)
    if config.num_workers > 0:
        # Grain 0.2.18's mp_prefetch reads an absl flag (worker profiling) and fails when the
        # program did not parse absl flags (pytest, notebooks); the defaults are what we want.
        if not absl_flags.FLAGS.is_parsed():
            absl_flags.FLAGS.mark_as_parsed()
        stream = stream.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=config.num_workers, per_worker_buffer_size=config.worker_buffer_size)
        )
    stream = _CountAndDropIterDataset(stream, max_consecutive_drops=len(records))
    if config.packing == "none":
        return pad_documents(stream, seq_len=config.seq_len, max_images_per_row=config.max_images_per_row,
                             pad_id=pad_id)
    return pack_documents(stream, seq_len=config.seq_len, max_images_per_row=config.max_images_per_row,
                          lookahead=config.pack_lookahead, pad_id=pad_id)


class _ConcatStreamsIterDataset(grain.IterDataset):
    """Batches of several streams concatenated along the batch axis, in stream order."""

    def __init__(self, streams: Mapping[int, grain.IterDataset], stream_count: int):
        super().__init__(list(streams.values()))
        self._ids, self._count = list(streams), stream_count

    def __iter__(self) -> grain.DatasetIterator:
        return StreamsIterator({s: p.__iter__() for s, p in zip(self._ids, self._parents)}, self._count)


class StreamsIterator(grain.DatasetIterator):
    """The train iterator: `stream_ids` are the streams it serves of `stream_count`; state
    `{"streams": {"<s>": state}}`."""

    def __init__(self, streams: Mapping[int, grain.DatasetIterator], stream_count: int):
        super().__init__(list(streams.values()))
        self.stream_ids, self.stream_count = tuple(streams), stream_count
        self._streams = dict(streams)

    def __next__(self) -> dict[str, np.ndarray]:
        batches = [next(it) for it in self._streams.values()]
        if len(batches) == 1:
            return batches[0]
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    def get_state(self) -> dict[str, Any]:
        return {"streams": {str(s): it.get_state() for s, it in self._streams.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        saved = state.get("streams", {})
        missing = [s for s in self.stream_ids if str(s) not in saved]
        if missing:
            raise ValueError(f"data iterator state has no state for stream(s) {missing} (it has {sorted(saved)})")
        for s, it in self._streams.items():
            it.set_state(saved[str(s)])


def make_train_iterator(config: LoaderConfig | Mapping[str, Any] | Any, tokenizer: Tokenizer | None = None
                        ) -> grain.DatasetIterator:
    """Iterator of packed batches (DESIGN.md dict of numpy arrays) for one JAX process.

    `config`: a LoaderConfig, a dict of its fields, or an argparse.Namespace with those fields.
    `tokenizer`: an already-built Tokenizer, overriding `config.tokenizer`.
    Each batch (this process's rows, its streams' rows in stream order): input_ids/targets/positions/segment_ids int32 `[batch, seq_len]`, loss_mask float32
    `[batch, seq_len]`, pixel_values float32 `[batch, max_images_per_row, H, W, 3]`, image_mask bool
    `[batch, max_images_per_row]`; family "idefics2" adds pixel_attention_mask bool `[batch, max_images_per_row,
    H, W]` (H = W = image_longest_edge; True on each image's pixels). Save/restore with `get_state()`/`set_state()` or Orbax
    (`vlm_jax.checkpoint.TrainCheckpointer`, one file per stream; grain's own handler works too, for the same
    process count); read counters with `loader_metrics(it)`.
    """
    if not isinstance(config, LoaderConfig):
        if not isinstance(config, Mapping):  # argparse.Namespace: take the fields the loader knows.
            names = {f.name for f in dataclasses.fields(LoaderConfig)}
            config = {k: v for k, v in vars(config).items() if k in names}
        config = LoaderConfig.from_dict(config)
    return iter(make_train_dataset(config, tokenizer))
