"""A small interleaved image-text corpus built from photos shipped inside installed packages (no downloads).

Sources: scikit-image's bundled sample images (`skimage/data/`) and matplotlib's
`mpl-data/sample_data/grace_hopper.jpg`, one class each. Every image in the corpus is a fresh random
augmentation of a source photo (random resized crop, horizontal flip, brightness / contrast /
saturation jitter), so the model sees many distinct pictures of each subject and has to recognise
the subject, not memorise pixels.

`build(out_dir)` writes:
    out_dir/train.jsonl + images/train/*.jpg   textbook-format documents: 2-5 images each, every image
                                                followed by a sentence naming its subject
                                                ("<image> This is a cat." / "<image> What is in the
                                                image? Answer: cat.")
    out_dir/shards/                            the same documents as a corpus folder (TFDS ArrayRecord
                                                dataset + manifest.json, `vlm_jax.data.records`, the
                                                format `data_prep.convert` writes), image bytes inside
    out_dir/heldout.jsonl + images/heldout/    multiple-choice questions on *other* augmentations
                                                (another random stream): "What is in the image?
                                                Answer:" with every class name as a choice
and returns their paths. It is a no-op when out_dir already holds a build with the same settings.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import io
import json
import os
import shutil
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from vlm_jax.data.records import RECORD_FORMAT, CorpusWriter

QUESTION = "What is in the image? Answer:"
BUILD_FILE = "build.json"


@dataclasses.dataclass(frozen=True)
class Subject:
    package: str
    path: str  # inside the package
    name: str  # the answer word
    phrase: str  # the name with its article, for captions


SUBJECTS = (
    Subject("skimage", "data/astronaut.png", "astronaut", "an astronaut"),
    Subject("skimage", "data/chelsea.png", "cat", "a cat"),
    Subject("skimage", "data/coffee.png", "coffee", "a cup of coffee"),
    Subject("skimage", "data/camera.png", "cameraman", "a cameraman"),
    Subject("skimage", "data/rocket.jpg", "rocket", "a rocket"),
    Subject("skimage", "data/horse.png", "horse", "a horse"),
    Subject("skimage", "data/coins.png", "coins", "some coins"),
    Subject("skimage", "data/moon.png", "moon", "the moon"),
    Subject("skimage", "data/motorcycle_left.png", "motorcycle", "a motorcycle"),
    Subject("skimage", "data/brick.png", "bricks", "a brick wall"),
    Subject("skimage", "data/hubble_deep_field.jpg", "galaxies", "distant galaxies"),
    Subject("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "admiral", "an admiral"),
)

CAPTIONS = ("This is {phrase}.", "Here we see {phrase}.", "The picture shows {phrase}.", QUESTION + " {name}.")
INTROS = ("A page of pictures.", "Let us look at some photos.", "Lesson: naming what we see.", "")


def load_subject(subject: Subject) -> Image.Image:
    """The source photo of `subject` as RGB (grey images are expanded)."""
    path = importlib.resources.files(subject.package).joinpath(subject.path)
    with path.open("rb") as f, Image.open(f) as img:
        return img.convert("RGB")


def augment(img: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """A random view of `img`: crop of 25-100% of the area with aspect 3/4-4/3, flip with p=0.5,
    brightness/contrast/saturation each scaled by U(0.7, 1.3); resized to `size` x `size`."""
    width, height = img.size
    for _ in range(10):
        area = width * height * rng.uniform(0.25, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w, h = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if w <= width and h <= height:
            break
    else:
        w = h = min(width, height)
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    view = img.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
    if rng.random() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        view = enhancer(view).enhance(float(rng.uniform(0.7, 1.3)))
    return view


def _save(view: Image.Image, root: str, rel: str) -> bytes:
    """Writes `view` as a JPEG to `root/rel`; returns the file's bytes."""
    buffer = io.BytesIO()
    view.save(buffer, format="JPEG", quality=92)
    data = buffer.getvalue()
    with open(os.path.join(root, rel), "wb") as f:
        f.write(data)
    return data


def build(out_dir: str, *, train_documents: int = 600, heldout_per_class: int = 10, image_size: int = 64,
          seed: int = 0) -> dict[str, str]:
    """Builds (or reuses) the corpus in `out_dir`; returns {"shards", "heldout", "train_jsonl"} paths."""
    out_dir = os.path.abspath(out_dir)
    settings = {"train_documents": train_documents, "heldout_per_class": heldout_per_class,
                "image_size": image_size, "seed": seed, "subjects": [s.name for s in SUBJECTS]}
    paths = {"shards": os.path.join(out_dir, "shards"), "heldout": os.path.join(out_dir, "heldout.jsonl"),
             "train_jsonl": os.path.join(out_dir, "train.jsonl")}
    build_file = os.path.join(out_dir, BUILD_FILE)
    if os.path.exists(build_file):
        with open(build_file) as f:
            if json.load(f) == settings:
                return paths
    shutil.rmtree(out_dir, ignore_errors=True)
    for sub in ("images/train", "images/heldout"):
        os.makedirs(os.path.join(out_dir, sub))
    sources = [load_subject(s) for s in SUBJECTS]
    train_rng, heldout_rng = (np.random.default_rng([seed, stream]) for stream in (0, 1))

    writer = CorpusWriter(paths["shards"], max(train_documents // 4, 1))
    images_written = 0
    with open(paths["train_jsonl"], "w") as f:
        for d in range(train_documents):
            images, texts, image_bytes, image_meta = [], [], [], []
            intro = INTROS[int(train_rng.integers(len(INTROS)))]
            if intro:
                images.append(None)
                texts.append(intro)
                image_bytes.append(None)
                image_meta.append(None)
            for k in range(int(train_rng.integers(2, 6))):
                c = int(train_rng.integers(len(SUBJECTS)))
                rel = f"images/train/{d:05d}_{k}.jpg"
                data = _save(augment(sources[c], train_rng, image_size), out_dir, rel)
                caption = CAPTIONS[int(train_rng.integers(len(CAPTIONS)))]
                images += [rel, None]
                texts += [None, caption.format(phrase=SUBJECTS[c].phrase, name=SUBJECTS[c].name)]
                image_bytes += [data, None]
                image_meta += [{"path": rel, "width": image_size, "height": image_size, "format": "JPEG"}, None]
                images_written += 1
            f.write(json.dumps({"images": images, "texts": texts, "metadata": {"demo_document": d}}) + "\n")
            writer.write({"id": f"demo-{d:05d}", "texts": texts, "images": image_bytes, "image_meta": image_meta,
                          "metadata": {"metadata": {"demo_document": d}}})
    manifest = os.path.join(writer.partial, "manifest.json")
    with open(manifest, "w") as f:
        json.dump({"format": "textbook", "input": paths["train_jsonl"], "images_root": out_dir,
                   "record_format": RECORD_FORMAT, "shards": writer.shards(), "documents_read": train_documents,
                   "documents_written": train_documents, "images_written": images_written}, f, indent=2)
    writer.publish({"manifest.json": manifest}, description="vlm_jax CPU demo corpus")

    names = [s.name for s in SUBJECTS]
    with open(paths["heldout"], "w") as f:
        for c, subject in enumerate(SUBJECTS):
            for i in range(heldout_per_class):
                rel = f"images/heldout/{c:02d}_{i:03d}.jpg"
                _save(augment(sources[c], heldout_rng, image_size), out_dir, rel)
                f.write(json.dumps({"image": rel, "prompt": QUESTION, "choices": names, "answer": subject.name}) + "\n")

    with open(build_file, "w") as f:
        json.dump(settings, f)
    return paths


def describe(paths: dict[str, Any]) -> str:
    """One line about a built corpus (documents, images, held-out questions)."""
    with open(os.path.join(paths["shards"], "manifest.json")) as f:
        manifest = json.load(f)
    with open(paths["heldout"]) as f:
        questions = sum(1 for line in f if line.strip())
    return (f"demo corpus: {manifest['documents_written']} documents, {manifest['images_written']} images of "
            f"{len(SUBJECTS)} subjects; {questions} held-out questions on other augmentations")
