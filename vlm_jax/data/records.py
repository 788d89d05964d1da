"""The corpus format: a TFDS dataset in the ArrayRecord file format, one interleaved document per example.

A converted corpus is one folder, self-described by TFDS metadata:

    OUT/dataset_info.json, OUT/features.json        written by `tfds.folder_dataset.write_metadata`
    OUT/<name>-train.array_record-NNNNN-of-MMMMM      the shards (only those dataset_info.json lists are read)
    OUT/manifest.json, OUT/skipped.jsonl              the conversion's counts and its skipped items

Anyone opens it with `tfds.builder_from_directory(OUT).as_data_source(split="train")` (no TensorFlow
needed). Features of one example (`FEATURES`):

    id        Text             document id (source file and position, or the corpus' own id)
    layout    Sequence(bool)   document order: True at an image position, False at a text position
    texts     Sequence(Text)   the strings of the text positions, in order
    images    Sequence({...})  the image positions, in order: `image` (the encoded bytes as found on
                               disk: JPEG/PNG/...), `path`, `width`, `height`, `format`, and for textbook
                               keyframes `video_id`, `clip_start`, `clip_end`, `frame_index` ("" / -1 if not)
    metadata  Text             the source document's metadata as JSON

In memory a document is the dict `{"id", "texts", "images", "image_meta", "metadata"}` with parallel
lists (`texts[i]` a str and `images[i]`/`image_meta[i]` None at text positions, the reverse at image
positions): `encode_document` / `decode_document` convert between the two. `CorpusWriter` writes a
corpus atomically (shards in `OUT/.partial/`, published with the metadata at the end); `open_corpus`
reads one back as a random-access source of raw records.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlm_jax import cli

SPLIT = "train"
FORMAT_VERSION = "2.0.0"  # 1 was the msgpack record codec, no longer read.
RECORD_FORMAT = f"TFDS ArrayRecord dataset v{FORMAT_VERSION} (vlm_jax.data.records)"  # as named in manifest.json
PARTIAL_DIR = ".partial"
WRITER_OPTIONS = "group_size:1,uncompressed"  # group_size 1: cheap random access; images are already compressed.
METADATA_FILES = ("dataset_info.json", "features.json", "manifest.json", "skipped.jsonl")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SHARD = re.compile(r"^[a-z][a-z0-9_]*-train\.array_record-\d{5}-of-\d{5}$")
_IMAGE_DEFAULTS = {"path": "", "width": 0, "height": 0, "format": "", "video_id": "", "clip_start": -1.0,
                   "clip_end": -1.0, "frame_index": -1}
_KEYFRAME_FIELDS = ("video_id", "clip_start", "clip_end", "frame_index")


class CorpusError(cli.InputError):
    """A folder that is not a readable converted corpus; the message names the folder and the fix."""


@functools.cache
def features():
    """The TFDS FeaturesDict of one document (module docstring); one per process."""
    import tensorflow_datasets as tfds  # Imported here: only corpus reading/writing needs it.

    text = tfds.features.Text()
    return tfds.features.FeaturesDict({
        "id": text,
        "layout": tfds.features.Sequence(np.bool_),
        "texts": tfds.features.Sequence(text),
        "images": tfds.features.Sequence({
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),
            "path": text, "width": np.int32, "height": np.int32, "format": text,
            "video_id": text, "clip_start": np.float32, "clip_end": np.float32, "frame_index": np.int32,
        }),
        "metadata": text,
    })


def check_document(doc: Mapping[str, Any]) -> None:
    """Raises ValueError unless texts/images/image_meta are parallel with one non-null per position."""
    for field in ("id", "texts", "images", "image_meta"):
        if field not in doc:
            raise ValueError(f"document has no field {field!r}")
    texts, images, meta = doc["texts"], doc["images"], doc["image_meta"]
    if not (isinstance(texts, list) and isinstance(images, list) and isinstance(meta, list)):
        raise ValueError(f"document {doc['id']!r}: texts/images/image_meta must be lists")
    if not len(texts) == len(images) == len(meta):
        raise ValueError(f"document {doc['id']!r}: texts/images/image_meta lengths differ "
                         f"({len(texts)}, {len(images)}, {len(meta)})")
    for i, (text, image) in enumerate(zip(texts, images)):
        if (text is None) == (image is None):
            raise ValueError(f"document {doc['id']!r} position {i}: exactly one of texts/images must be set")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"document {doc['id']!r} texts[{i}] is {type(text).__name__}, expected str")
        if image is not None and not isinstance(image, bytes):
            raise ValueError(f"document {doc['id']!r} images[{i}] is {type(image).__name__}, expected bytes")


def to_example(doc: Mapping[str, Any]) -> dict[str, Any]:
    """In-memory document -> the feature dict `FEATURES` serialises (validated first)."""
    check_document(doc)
    images = []
    for data, meta in zip(doc["images"], doc["image_meta"]):
        if data is not None:
            images.append({**_IMAGE_DEFAULTS, **{k: v for k, v in (meta or {}).items() if k in _IMAGE_DEFAULTS},
                           "image": data})
    return {
        "id": str(doc["id"]),
        "layout": [text is None for text in doc["texts"]],
        "texts": [text for text in doc["texts"] if text is not None],
        "images": images,
        "metadata": json.dumps(doc.get("metadata"), ensure_ascii=False),
    }


def from_example(example: Mapping[str, Any]) -> dict[str, Any]:
    """A decoded TFDS example (numpy form, as `as_data_source` returns it) -> in-memory document."""
    layout = [bool(x) for x in example["layout"]]
    strings = [_str(t) for t in example["texts"]]
    image_fields = example["images"]
    n_images = len(image_fields["image"])
    if sum(layout) != n_images or len(layout) - n_images != len(strings):
        raise ValueError(f"layout has {sum(layout)} image and {len(layout) - sum(layout)} text positions but the "
                         f"record holds {n_images} images and {len(strings)} texts")
    texts, images, image_meta = [], [], []
    text_iter, image_iter = iter(strings), iter(range(n_images))
    for is_image in layout:
        if not is_image:
            texts.append(next(text_iter))
            images.append(None)
            image_meta.append(None)
            continue
        k = next(image_iter)
        meta = {"path": _str(image_fields["path"][k]), "width": int(image_fields["width"][k]),
                "height": int(image_fields["height"][k]), "format": _str(image_fields["format"][k])}
        if _str(image_fields["video_id"][k]):
            meta.update(video_id=_str(image_fields["video_id"][k]), clip_start=float(image_fields["clip_start"][k]),
                        clip_end=float(image_fields["clip_end"][k]), frame_index=int(image_fields["frame_index"][k]))
        texts.append(None)
        images.append(bytes(image_fields["image"][k]))
        image_meta.append(meta)
    return {"id": _str(example["id"]), "texts": texts, "images": images, "image_meta": image_meta,
            "metadata": json.loads(_str(example["metadata"]))}


def _str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def encode_document(doc: Mapping[str, Any], feature_dict=None) -> bytes:
    """Validates and serialises an in-memory document to one record (a serialised tf.train.Example)."""
    return (feature_dict or features()).serialize_example(to_example(doc))


def decode_document(record: bytes, feature_dict=None) -> dict[str, Any]:
    """Record bytes -> in-memory document; ValueError names what is malformed (never anything else)."""
    try:
        example = (feature_dict or features()).deserialize_example_np(record)
        doc = from_example(example)
    except Exception as err:  # noqa: BLE001 - protobuf/utf-8/json errors all mean one malformed record.
        raise ValueError(f"record does not decode as a corpus document: {type(err).__name__}: {err}") from err
    check_document(doc)
    return doc


def check_name(name: str) -> str:
    """The dataset (shard file) name: lower-case snake_case, so every shard path stays in its folder."""
    if not _NAME.match(name):
        raise ValueError(f"dataset name {name!r} must match {_NAME.pattern} (letters, digits, '_'; no path)")
    return name


def shard_file_name(name: str, index: int, total: int) -> str:
    return f"{name}-{SPLIT}.array_record-{index:05d}-of-{total:05d}"


class CorpusWriter:
    """Writes documents into `out_dir` as a TFDS ArrayRecord dataset, `shard_size` records per shard.

    Shards are written in `out_dir/.partial/` and only `publish()` moves them into `out_dir` with
    `features.json`, the extra files and, last, `dataset_info.json`: a folder holds a readable corpus
    only once conversion finished. `out_dir` must be empty (or hold only a `.partial/` left by a killed
    run, or the `manifest.json` + `skipped.jsonl` of a run that wrote nothing); with `overwrite=True` a
    previous corpus' files there are replaced, other files are kept.
    """

    def __init__(self, out_dir: str, shard_size: int, name: str = "corpus", overwrite: bool = False):
        from array_record.python.array_record_module import ArrayRecordWriter

        if shard_size < 1:
            raise ValueError(f"shard size {shard_size} must be >= 1")
        self._writer_cls = ArrayRecordWriter
        self.out_dir, self.name, self.shard_size = os.path.abspath(out_dir), check_name(name), shard_size
        self._features = features()
        _prepare_out_dir(self.out_dir, overwrite)
        self.partial = os.path.join(self.out_dir, PARTIAL_DIR)
        shutil.rmtree(self.partial, ignore_errors=True)
        os.makedirs(self.partial)
        self._writer, self.shard_lengths, self.num_bytes = None, [], 0

    def write(self, doc: Mapping[str, Any]) -> None:
        """Appends one in-memory document (validated)."""
        self.write_record(encode_document(doc, self._features))

    def write_record(self, record: bytes) -> None:
        """Appends one already-encoded record."""
        if self._writer is None:
            self._writer = self._writer_cls(os.path.join(self.partial, f"shard-{len(self.shard_lengths):05d}"),
                                            WRITER_OPTIONS)
            self.shard_lengths.append(0)
        self._writer.write(record)
        self.num_bytes += len(record)
        self.shard_lengths[-1] += 1
        if self.shard_lengths[-1] == self.shard_size:
            self._close_shard()

    def shards(self) -> list[dict[str, Any]]:
        """`{"path", "num_records"}` per shard, with the file names `publish()` will give them."""
        total = len(self.shard_lengths)
        return [{"path": shard_file_name(self.name, i, total), "num_records": n}
                for i, n in enumerate(self.shard_lengths)]

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def publish(self, extra_files: Mapping[str, str] | None = None, description: str = "") -> list[str]:
        """Closes the last shard and publishes the corpus; returns the shard file names.

        `extra_files`: name -> path of files written elsewhere (e.g. `skipped.jsonl`) moved in too.
        Refuses to publish an empty corpus (CorpusError): TFDS cannot describe a split with no records.
        """
        import tensorflow_datasets as tfds

        self._close_shard()
        if not self.shard_lengths:
            raise CorpusError(f"{self.out_dir}: no document to write")
        names = [shard["path"] for shard in self.shards()]
        _remove_previous_corpus(self.out_dir)
        for i, name in enumerate(names):
            os.replace(os.path.join(self.partial, f"shard-{i:05d}"), os.path.join(self.out_dir, name))
        for name, path in (extra_files or {}).items():
            os.replace(path, os.path.join(self.out_dir, name))
        split = tfds.core.SplitInfo(name=SPLIT, shard_lengths=list(self.shard_lengths), num_bytes=self.num_bytes,
                                    filename_template=None)
        staging = os.path.join(self.partial, "meta")  # write_metadata writes both JSON files; move info last.
        os.makedirs(staging)
        for name in names:  # write_metadata looks for the shards next to the metadata.
            os.symlink(os.path.join(self.out_dir, name), os.path.join(staging, name))
        tfds.folder_dataset.write_metadata(
            data_dir=staging, features=self._features, split_infos=[split], version=FORMAT_VERSION,
            filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", check_data=False,
            description=description or "Interleaved image-text documents (vlm_jax.data.records).")
        os.replace(os.path.join(staging, "features.json"), os.path.join(self.out_dir, "features.json"))
        os.replace(os.path.join(staging, "dataset_info.json"), os.path.join(self.out_dir, "dataset_info.json"))
        shutil.rmtree(self.partial)
        return names

    def publish_empty(self, extra_files: Mapping[str, str] | None = None) -> None:
        """Ends a run that wrote no document: a previous corpus in `out_dir` is removed (there is no
        dataset to describe) and only `extra_files` (the run's report) are moved in."""
        self._close_shard()
        _remove_previous_corpus(self.out_dir)
        for name, path in (extra_files or {}).items():
            os.replace(path, os.path.join(self.out_dir, name))
        shutil.rmtree(self.partial, ignore_errors=True)

    def abort(self) -> None:
        """Closes and removes what was written (nothing is published)."""
        self._close_shard()
        shutil.rmtree(self.partial, ignore_errors=True)


def _prepare_out_dir(out_dir: str, overwrite: bool) -> None:
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise CorpusError(f"--out {out_dir} exists and is not a directory")
    os.makedirs(out_dir, exist_ok=True)
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise CorpusError(f"--out {out_dir} is not writable")
    leftover = [n for n in os.listdir(out_dir) if n != PARTIAL_DIR]
    if set(leftover) <= {"manifest.json", "skipped.jsonl"} and _own_manifest(out_dir):
        leftover = []  # the report of a run that wrote no corpus: replaced like a leftover .partial/
    if leftover and not overwrite:
        raise CorpusError(f"--out {out_dir} is not empty ({len(leftover)} entries, e.g. {sorted(leftover)[0]!r}): "
                          "choose an empty folder or pass --overwrite to replace a previous conversion")


def _own_manifest(out_dir: str) -> bool:
    try:
        with open(os.path.join(out_dir, "manifest.json")) as f:
            return json.load(f).get("record_format") == RECORD_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _remove_previous_corpus(out_dir: str) -> None:
    """Removes a previous conversion's files (metadata first, so no reader sees a half-old corpus)."""
    for name in ("dataset_info.json", "features.json"):
        if os.path.lexists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    for name in os.listdir(out_dir):
        if name in METADATA_FILES or _SHARD.match(name):
            os.remove(os.path.join(out_dir, name))


@dataclasses.dataclass(frozen=True)
class Corpus:
    """An opened corpus: `source` is a random-access Sequence of raw records (bytes)."""

    path: str
    source: Sequence[bytes]
    num_records: int


def open_corpus(path: str) -> Corpus:
    """Opens a converted corpus folder as a raw-record source; CorpusError says what is wrong.

    Only the shards its `dataset_info.json` lists are read; each must exist with the size of a real
    shard, so leftovers of a killed conversion (0-byte or unlisted files) are never read.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import decode

    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise CorpusError(f"{path} is not a folder (give a folder written by python -m data_prep.convert)")
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
        hint = " (a conversion did not finish: run it again)" if os.path.isdir(os.path.join(path, PARTIAL_DIR)) else ""
        raise CorpusError(f"{path} has no dataset_info.json: not a converted corpus{hint}; "
                          "convert it with python -m data_prep.convert")
    try:
        builder = tfds.builder_from_directory(path)
        split = builder.info.splits[SPLIT]
        files = [str(f) for f in split.filepaths]
    except Exception as err:  # noqa: BLE001 - any metadata failure means an unreadable corpus folder.
        raise CorpusError(f"{path}: unreadable dataset_info.json/features.json ({type(err).__name__}: {err})") from err
    for f in files:
        if not os.path.isfile(f) or os.path.getsize(f) == 0:
            raise CorpusError(f"{path}: shard {os.path.basename(f)} listed in dataset_info.json is missing or empty")
    source = builder.as_data_source(split=SPLIT, deserialize_method=decode.DeserializeMethod.RAW_BYTES)
    return Corpus(path, source, len(source))


class ConcatSource(Sequence):
    """Several random-access sources read as one, in order."""

    def __init__(self, sources: Sequence[Sequence]):
        self._sources = list(sources)
        self._starts = np.cumsum([0] + [len(s) for s in self._sources])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._sources[k][index - int(self._starts[k])]


def open_corpora(paths: Sequence[str]) -> ConcatSource:
    """Several corpus folders (CorpusError for any that is not one) as one raw-record source."""
    if not paths:
        raise CorpusError("no corpus folder given")
    return ConcatSource([open_corpus(p).source for p in paths])
