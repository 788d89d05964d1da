"""Corpus statistics and in-sample image similarity of interleaved documents.

    python -m data_prep.stats --data CORPUS_OR_JSON [--clip-ckpt CKPT] [--tokenizer DIR] --out report.json

For every document: readable and corrupt images, text pieces, tokens as the model sees them (the
seed's tokenization rule: BOS, text, `num_image_tokens` per kept image (at most `max_images`), EOS)
and the in-sample image similarity (`data_prep.similarity`). Aggregates: totals, distribution
summaries, and the similarity grouped by image count (4-11 images per document, the paper's table).
Per-document rows stream to `<out>.documents.jsonl`; only a few numbers per document stay in memory
(for percentiles and histograms). Histogram PNGs go to `--plots` (default `<out>_plots/`).
"""

from __future__ import annotations

import array
import collections
import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from data_prep.corpus_reader import SourceDocument, is_json_input, iter_source_documents
from data_prep.formats import FORMATS
from data_prep.similarity import (PROTOCOLS, ClipFeaturizer, decode_bgr, document_similarity, grey, original_score,
                                  original_sums, random_vision_tower)
from vlm_jax import cli
from vlm_jax.checkpoint import load_config, load_vision_tower, tokenizer_spec as checkpoint_tokenizer
from vlm_jax.data import records
from data_prep.stats_plots import write_histograms
from vlm_jax.data.image import check_image_size, open_image_bytes
from vlm_jax.data.tokenizer import Tokenizer, seed_text_pieces

PAPER_GROUPS = tuple(range(4, 12))  # image counts per document in the paper's similarity table
DISTRIBUTIONS = ("images", "text_pieces", "tokens", "similarity")


def decode_images(doc: dict[str, Any]) -> tuple[list[str | None], list[Image.Image], int]:
    """Decodes a record's images; corrupt/empty ones, and those over `vlm_jax.data.image`'s pixel or
    aspect-ratio limit (refused from the header, never decoded), are dropped with their placeholder and
    counted as corrupt.

    Returns (texts with None at the kept image positions, decoded RGB images in order, corrupt count).
    """
    texts, images, corrupt = [], [], 0
    for text, data in zip(doc["texts"], doc["images"]):
        if text is not None:
            texts.append(text)
            continue
        try:
            with open_image_bytes(data) as img:
                check_image_size(*img.size)
                images.append(img.convert("RGB"))
        except Exception:  # noqa: BLE001 - any decoder failure means a corrupt image: count it.
            corrupt += 1
            continue
        texts.append(None)
    return texts, images, corrupt


def count_tokens(texts: Sequence[str | None], tokenizer: Tokenizer, num_image_tokens: int, max_images: int) -> dict[str, int]:
    """Tokens of a document as the model sees it (no length budget): BOS + text + image blocks + EOS.

    Same pieces as `vlm_jax.data.tokenizer.tokenize_interleaved`; images beyond `max_images` are
    dropped with their placeholder, as the seed does.
    """
    pieces = seed_text_pieces(texts, max_images)
    text_tokens = sum(len(tokenizer.encode(p) if k == 0 else tokenizer.encode_continuation(p))
                      for k, p in enumerate(pieces) if p)  # as tokenize_interleaved: no prefix space after <image>
    kept = len(pieces) - 1
    special = (tokenizer.bos_id is not None) + 1
    image_tokens = kept * num_image_tokens
    return {"tokens": text_tokens + image_tokens + special, "text_tokens": text_tokens,
            "image_tokens": image_tokens, "images_in_sequence": kept}


@dataclasses.dataclass
class Accumulator:
    """Running totals, per-image-count similarity sums and per-document values for distributions."""

    documents: int = 0
    documents_skipped: int = 0
    images: int = 0
    images_corrupt: int = 0
    pairs: int = 0
    tokens: int = 0
    skip_reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    groups: dict = dataclasses.field(default_factory=dict)  # image count -> {"documents", "similarity", "clip", "ssim"} sums
    values: dict = dataclasses.field(default_factory=lambda: {k: array.array("d") for k in DISTRIBUTIONS})

    def add_skips(self, skips: Iterable[tuple[str, str]]) -> None:
        for reason, _ in skips:
            self.skip_reasons[reason] += 1
            if reason == "undecodable_image":
                self.images_corrupt += 1

    def add(self, row: dict[str, Any]) -> None:
        self.documents += 1
        self.images += row["images"]
        self.images_corrupt += row["images_corrupt"]
        self.pairs += row["pairs"]
        self.tokens += row["tokens"]
        for key in ("images", "text_pieces", "tokens"):
            self.values[key].append(row[key])
        if row["similarity"] is not None:
            self.values["similarity"].append(row["similarity"])
            group = self.groups.setdefault(row["group"], {"documents": 0, "similarity": 0.0, "clip": 0.0, "ssim": 0.0})
            group["documents"] += 1
            for key in ("similarity", "clip", "ssim"):
                group[key] += row[key]

    def report(self) -> dict[str, Any]:
        """The aggregate part of report.json."""
        def summary(values: array.array) -> dict[str, float] | None:
            if not values:
                return None
            v = np.frombuffer(values, np.float64)
            p = np.percentile(v, [5, 50, 95])
            return {"mean": float(v.mean()), "min": float(v.min()), "p5": float(p[0]), "median": float(p[1]),
                    "p95": float(p[2]), "max": float(v.max())}

        def group_means(count: int) -> dict[str, Any]:
            g = self.groups.get(count)
            if g is None:
                return {"documents": 0, "similarity": None, "clip": None, "ssim": None}
            n = g["documents"]
            return {"documents": n, **{k: g[k] / n for k in ("similarity", "clip", "ssim")}}

        return {
            "documents": self.documents,
            "documents_skipped": self.documents_skipped,
            "skipped": dict(self.skip_reasons),
            "images": self.images,
            "images_corrupt": self.images_corrupt,
            "image_pairs": self.pairs,
            "tokens": self.tokens,
            "per_document": {k: summary(self.values[k]) for k in DISTRIBUTIONS},
            "similarity_by_image_count": {str(c): group_means(c) for c in PAPER_GROUPS},
            "similarity_all_image_counts": {str(c): group_means(c) for c in sorted(self.groups)},
        }


def _chunks_by_images(docs: Iterable[SourceDocument], min_images: int) -> Iterator[list]:
    """Groups decoded documents so each group has >= `min_images` images (CLIP batches stay full)."""
    chunk, n = [], 0
    for source in docs:
        if source.doc is None:
            chunk.append((source, None))
            continue
        decoded = decode_images(source.doc)
        chunk.append((source, decoded))
        n += len(decoded[1])
        if n >= min_images:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


def _image_num(doc: dict[str, Any], images: int) -> int:
    """The document's own `image_num` field (textbook JSON; what the original groups by), else its image count."""
    metadata = doc.get("metadata")
    value = metadata.get("image_num") if isinstance(metadata, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else images


def _similarity(protocol: str, doc: dict[str, Any], feats: np.ndarray, images: list, corrupt: int) -> dict[str, Any]:
    """Row fields of the in-sample similarity (`data_prep.similarity`); `group` is the table's key."""
    if protocol == "standard":
        return {"group": len(images), **dataclasses.asdict(document_similarity(feats, [grey(img) for img in images]))}
    image_num = _image_num(doc, len(images))
    row = {"group": image_num, "image_num": image_num, "pairs": len(images) * (len(images) - 1) // 2,
           "similarity": None, "clip": None, "ssim": None, "clip_sum": None, "ssim_sum": None, "ssim_failed": None}
    if corrupt:  # the original's clip_success = False: left out of the table
        return row
    bgr = [decode_bgr(data) for data in doc["images"] if data is not None]  # all passed the size limits above
    if any(b is None for b in bgr):
        return row
    sums = original_sums(feats, bgr)
    row.update(clip_sum=sums.clip_sum, ssim_sum=sums.ssim_sum, ssim_failed=sums.ssim_failed)
    row.update(original_score(sums, image_num) or {})
    return row


def iter_document_stats(docs: Iterable[SourceDocument], tokenizer: Tokenizer, featurizer: ClipFeaturizer, *,
                        num_image_tokens: int, max_images: int = 12, similarity: str = "original"
                        ) -> Iterator[tuple[SourceDocument, dict | None]]:
    """(source, row) per document; row is None for a document that could not be read at all.

    Row keys: id, location, images (readable), images_corrupt, text_pieces, tokens, text_tokens,
    image_tokens, images_in_sequence, pairs, similarity, clip, ssim (None when not computed), group
    (the similarity table's key), video_ids (textbook keyframes' videos); with `similarity="original"`
    also image_num, clip_sum, ssim_sum, ssim_failed.
    """
    if similarity not in PROTOCOLS:
        raise ValueError(f"similarity protocol {similarity!r}; expected one of {PROTOCOLS}")
    for chunk in _chunks_by_images(docs, featurizer.batch_size):
        all_images = [img for _, decoded in chunk if decoded is not None for img in decoded[1]]
        features = featurizer(all_images)
        offset = 0
        for source, decoded in chunk:
            if decoded is None:
                yield source, None
                continue
            texts, images, corrupt = decoded
            feats = features[offset : offset + len(images)]
            offset += len(images)
            meta = [m for m in source.doc["image_meta"] if m]
            row = {
                "id": source.doc["id"],
                "location": source.location,
                "images": len(images),
                "images_corrupt": corrupt,
                "text_pieces": sum(1 for t in texts if t),
                **count_tokens(texts, tokenizer, num_image_tokens, max_images),
                **_similarity(similarity, source.doc, feats, images, corrupt),
                "video_ids": sorted({m["video_id"] for m in meta if "video_id" in m}),
            }
            yield source, row


def compute_stats(data: Sequence[str], out: str, *, tokenizer: Tokenizer, featurizer: ClipFeaturizer,
                  num_image_tokens: int, max_images: int = 12, fmt: str = "textbook", images_root: str | None = None,
                  text_field: str = "texts", plots_dir: str | None = None, max_documents: int | None = None,
                  notes: dict | None = None, similarity: str = "original") -> dict[str, Any]:
    """Streams `data`, writes `out` (report JSON), `<out>.documents.jsonl` and histogram PNGs; returns the report."""
    acc = Accumulator()
    rows_path = os.path.splitext(out)[0] + ".documents.jsonl"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    docs = iter_source_documents(data, fmt, images_root, text_field)
    if max_documents is not None:
        docs = (d for _, d in zip(range(max_documents), docs))
    with open(rows_path, "w") as rows_file:
        for source, row in iter_document_stats(docs, tokenizer, featurizer, num_image_tokens=num_image_tokens,
                                               max_images=max_images, similarity=similarity):
            acc.add_skips(source.skips)
            if row is None:
                acc.documents_skipped += 1
                continue
            acc.add(row)
            rows_file.write(json.dumps(row) + "\n")
    report = {
        "data": list(data),
        "similarity_protocol": similarity,
        "similarity_grouped_by": "image_num field (else image count)" if similarity == "original" else "image count",
        "clip": {"source": featurizer.source, "feature": featurizer.feature, "image_size": featurizer.config.image_size},
        "tokenizer": type(tokenizer).__name__ + (f" ({tokenizer.path})" if hasattr(tokenizer, "path") else ""),
        "num_image_tokens": num_image_tokens,
        "max_images": max_images,
        **(notes or {}),
        **acc.report(),
        "documents_file": rows_path,
    }
    plots_dir = plots_dir or os.path.splitext(out)[0] + "_plots"
    report["plots"] = write_histograms(acc.values, report["similarity_by_image_count"], plots_dir)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    return report


def make_featurizer(clip_ckpt: str | None, batch_size: int, seed: int = 0) -> ClipFeaturizer:
    """CLIP from a converted vlm_jax checkpoint, or (without one) a small randomly initialised CLIP.

    Without a checkpoint the CLIP half of the similarity has no meaning (random features); the
    report's `clip.source` says so. The tiny tower keeps that case fast on CPU.
    """
    if clip_ckpt:
        config, params = load_vision_tower(clip_ckpt)
        return ClipFeaturizer(config, params, batch_size, source=f"checkpoint {os.path.abspath(clip_ckpt)}")
    from vlm_jax.models.config import preset

    config = preset("tiny").vision_config
    return ClipFeaturizer(config, random_vision_tower(config, seed), batch_size,
                          source=f"RANDOM-INIT tiny CLIP (preset 'tiny', seed {seed}; no --clip-ckpt given): the CLIP "
                                 "half of the similarity is NOT meaningful, the SSIM half is")


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit status (0, 1 bad input, 2 usage) after one `error:` line."""
    return cli.run(_main, argv, prog="python -m data_prep.stats")


def _check_args(parser, args) -> None:
    """Every input named on the command line exists and is of the right kind, before anything is computed."""
    from data_prep.corpus_reader import JSON_SUFFIXES, is_json_input

    for name, value, low in (("--batch-size", args.batch_size, 1), ("--max-images", args.max_images, 0),
                             ("--num-image-tokens", args.num_image_tokens, 1), ("--max-documents", args.max_documents, 1)):
        if value is not None and value < low:
            parser.error(f"{name} must be >= {low}, got {value}")
    fix = ("give a converted corpus folder (the --out of python -m data_prep.convert) or the seeds' JSON/JSONL "
           "with --images")
    for spec in args.data:
        if not os.path.exists(spec):
            raise cli.InputError(f"--data {spec}: no such file or folder; {fix}")
        if is_json_input(spec):
            if os.path.isdir(spec) and not any(n.endswith(JSON_SUFFIXES) for n in os.listdir(spec)):
                raise cli.InputError(f"--data {spec}: not a converted corpus folder (no dataset_info.json) and no "
                                     f".json/.jsonl files in it; {fix}")
            if not os.path.isdir(spec) and not spec.endswith(JSON_SUFFIXES):
                raise cli.InputError(f"--data {spec}: neither a converted corpus folder nor .json/.jsonl; {fix}")
            if args.images is None:
                parser.error(f"--data {spec} is JSON input: pass --images ROOT (the folder its image paths are in)")
            cli.require_dir(args.images, "--images", "give the folder the JSON's image paths are relative to")
        else:
            records.open_corpus(spec)  # an unreadable corpus folder fails here, before anything runs
    if os.path.isdir(args.out):
        raise cli.InputError(f"--out {args.out}: is a folder; give the report's file name, e.g. {args.out}/report.json")
    if args.clip_ckpt:
        cli.require_dir(args.clip_ckpt, "--clip-ckpt", "give a vlm_jax params checkpoint (python -m vlm_jax.convert "
                                                       "hf-to-orbax)")
    if args.tokenizer not in (None, "byte"):
        from vlm_jax.data.tokenizer import check_tokenizer_folder

        check_tokenizer_folder(args.tokenizer, "--tokenizer")


def _main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(prog="python -m data_prep.stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, nargs="+", help="converted corpus folders or seed JSON/JSONL")
    parser.add_argument("--out", required=True, help="report JSON path")
    parser.add_argument("--clip-ckpt", default=None, help="vlm_jax params checkpoint (python -m vlm_jax.convert)")
    parser.add_argument("--tokenizer", default=None,
                        help="HF tokenizer folder, or 'byte' (default: --clip-ckpt's tokenizer if it has one, else byte)")
    parser.add_argument("--num-image-tokens", type=int, default=None, help="default: the checkpoint's, else 576")
    parser.add_argument("--max-images", type=int, default=12, help="images per document the model keeps (seed: 12)")
    parser.add_argument("--format", default="textbook", choices=FORMATS, help="JSON input format")
    parser.add_argument("--images", default=None, help="image root for JSON input")
    parser.add_argument("--text-field", default="texts", choices=("texts", "text_ocr_list"))
    parser.add_argument("--batch-size", type=int, default=16, help="CLIP batch size")
    parser.add_argument("--max-documents", type=int, default=None, help="stop after this many documents")
    parser.add_argument("--plots", default=None, help="histogram folder (default: <out>_plots)")
    parser.add_argument("--similarity", default="original", choices=PROTOCOLS,
                        help="in-sample similarity: 'original' (the paper's table, data_prep.similarity) or 'standard'")
    args = parser.parse_args(argv)
    _check_args(parser, args)

    from vlm_jax.data.tokenizer import make_tokenizer

    tokenizer_spec = args.tokenizer
    num_image_tokens = args.num_image_tokens
    if args.clip_ckpt:
        tokenizer_spec = tokenizer_spec or checkpoint_tokenizer(args.clip_ckpt)
        num_image_tokens = num_image_tokens or load_config(args.clip_ckpt).num_image_tokens
    tokenizer_spec = tokenizer_spec or "byte"
    num_image_tokens = num_image_tokens or 576
    featurizer = make_featurizer(args.clip_ckpt, args.batch_size)
    notes = {}
    if args.similarity == "original" and not featurizer.config.has_projection:
        notes["similarity_note"] = ("the CLIP tower has no projection: features are the pooled CLS, not the original's "
                                    "projected get_image_features (convert openai/clip-vit-large-patch14-336 with "
                                    "its projection for the paper's numbers)")
    if tokenizer_spec == "byte":
        notes["tokenizer_note"] = "byte tokenizer (--tokenizer, --clip-ckpt's record, or neither given): text token counts are UTF-8 bytes"
    for line in (f"[stats] CLIP: {featurizer.source}; features: {featurizer.feature}", notes.get("tokenizer_note"),
                 notes.get("similarity_note")):
        if line:
            print(line if line.startswith("[stats]") else f"[stats] {line}", file=sys.stderr)
    report = compute_stats(args.data, args.out, tokenizer=make_tokenizer(tokenizer_spec), featurizer=featurizer,
                           num_image_tokens=num_image_tokens, max_images=args.max_images, fmt=args.format,
                           images_root=args.images, text_field=args.text_field, plots_dir=args.plots,
                           max_documents=args.max_documents, notes=notes, similarity=args.similarity)
    print(f"[stats] {report['documents']} documents ({report['documents_skipped']} unreadable), "
          f"{report['images']} images ({report['images_corrupt']} corrupt), {report['image_pairs']} pairs, "
          f"{report['tokens']} tokens -> {args.out}, {report['documents_file']}, plots in "
          f"{os.path.dirname(report['plots'][0]) if report['plots'] else '-'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
