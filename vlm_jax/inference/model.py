"""The inference handle: `vlm_jax.load(ckpt)` returns a `VLM` holding the model, its params, its tokenizer and
its image settings, with `generate(...)` on prompts and images.

    import vlm_jax
    vlm = vlm_jax.load("workdir/demo/final")
    vlm.generate("<image> This is", images=["astronaut.png"], max_new_tokens=12)
    # {"token_ids": [...], "text": " an astronaut."}

A prompt is text, where each `<image>` marks the next image (with none, the images go first, each followed
by a newline, as LLaVA does), or token ids, where each image token id marks one image (or a run of
`num_image_tokens` of them one already-expanded image). Images are file paths or PIL images, preprocessed with
the checkpoint's `preprocessor_config.json` when it has one (CLIPImageProcessor semantics, `aspect="pad"` =
LLaVA-1.5's expand-to-square). An Idefics2 checkpoint is served the same way through the Idefics2 processor
(`vlm_jax.data.idefics2_processor`: the whole prompt expanded and tokenized by its tokenizer, images at their
aspect ratio resized to longest edge <= 560 / shortest >= 336 as the original trained, or the sizes its
`preprocessor_config.json` records, zero-padded with a pixel mask). Everything here is the one place where a
prompt becomes token ids and an image
file becomes pixels for generation, the generate CLI and the held-out scorer.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence, Union

import jax
import numpy as np
from PIL import Image

from vlm_jax import cli, paths
from vlm_jax.checkpoint import CheckpointError, load_config, load_params, tokenizer_spec
from vlm_jax.data import idefics2_processor
from vlm_jax.data.image import (ImageRejected, check_image_size, checkpoint_image_settings, open_image_file,
                                preprocess_image)
from vlm_jax.data.packing import PIXEL_MASK_KEY
from vlm_jax.data.tokenizer import Tokenizer, make_tokenizer
from vlm_jax.inference.generation import generate, generation_weights, left_pad
from vlm_jax.models.config import Idefics2Config, LlavaConfig
from vlm_jax.models.init import model_for

IMAGE_PLACEHOLDER = "<image>"
DEFAULT_MAX_NEW_TOKENS = 128  # the original evaluation's max_new_tokens

ImageInput = Union[str, os.PathLike, Image.Image]
Prompt = Union[str, Sequence[int]]


def expand_image_tokens(ids: Sequence[int], image_token_id: int, num_image_tokens: int) -> tuple[list[int], int]:
    """Expands each lone image token id to `num_image_tokens` copies; runs that are already whole multiples
    of `num_image_tokens` stay. Returns (expanded ids, number of images)."""
    out, n_images, i = [], 0, 0
    while i < len(ids):
        if ids[i] != image_token_id:
            out.append(int(ids[i]))
            i += 1
            continue
        j = i
        while j < len(ids) and ids[j] == image_token_id:
            j += 1
        run = j - i
        if run == 1:
            n_images += 1
        elif run % num_image_tokens == 0:
            n_images += run // num_image_tokens
        else:
            raise cli.UsageError(f"token ids: a run of {run} image tokens ({image_token_id}) at position {i} is "
                             f"neither 1 per image nor a multiple of num_image_tokens={num_image_tokens}")
        out.extend([image_token_id] * (num_image_tokens * (1 if run == 1 else run // num_image_tokens)))
        i = j
    return out, n_images


def text_prompt_ids(prompt: str, tokenizer: Tokenizer, n_images: int, image_token_id: int,
                    num_image_tokens: int) -> list[int]:
    """BOS + text pieces tokenized separately, an image block at each `<image>` (prepended when none)."""
    if IMAGE_PLACEHOLDER not in prompt and n_images:
        prompt = (IMAGE_PLACEHOLDER + "\n") * n_images + prompt
    pieces = prompt.split(IMAGE_PLACEHOLDER)
    if len(pieces) - 1 != n_images:
        raise cli.UsageError(f"the prompt has {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholders but {n_images} "
                             "images")
    ids = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    for k, piece in enumerate(pieces):
        if k:
            ids.extend([image_token_id] * num_image_tokens)
        ids.extend(tokenizer.encode(piece) if piece else [])
    return ids


@dataclasses.dataclass
class VLM:
    """A model ready for inference. `params` may be None for a handle that only prepares inputs (the training
    loop's held-out scorer holds its params itself); `tokenizer` is None for a checkpoint that records none
    (then prompts must be token ids). An Idefics2 handle has `processor` (its text prompts; None without a
    tokenizer) and `image_settings` {"longest_edge", "shortest_edge"} (its processor's resize)."""

    config: LlavaConfig | Idefics2Config
    params: Any
    tokenizer: Tokenizer | None
    image_settings: dict  # LLaVA: `preprocess_image` keyword arguments: image_size, crop_size, mean, std
    aspect: str = "pad"  # LLaVA: "pad" (LLaVA-1.5 expand-to-square) or "none"
    path: str | None = None  # the checkpoint folder, when loaded from one
    processor: idefics2_processor.Idefics2Processor | None = None  # Idefics2: prompt expansion + tokenization
    # `generation_weights` of `params`, made on the first single-device `generate` (CPU) and reused while the
    # handle keeps the same params object
    _weights: Any = dataclasses.field(default=None, repr=False, compare=False)
    _weights_of: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def model(self):
        return model_for(self.config)

    @property
    def idefics2(self) -> bool:
        return isinstance(self.config, Idefics2Config)

    def _image(self, image: ImageInput) -> np.ndarray:
        """One image (path or PIL image) -> float32 `[h, w, 3]` by the family's preprocessing."""
        def prepare(img):
            if not self.idefics2:
                return preprocess_image(img, aspect=self.aspect, **self.image_settings)
            check_image_size(*img.size)
            return idefics2_processor.preprocess_image(img, self.image_settings["longest_edge"],
                                                       self.image_settings["shortest_edge"])

        if isinstance(image, Image.Image):
            return prepare(image)
        try:
            with open_image_file(image) as img:
                return prepare(img)
        except ImageRejected as e:  # not a regular file, over the size limits
            raise cli.InputError(f"image {image}: {cli.one_line(e)}") from e
        except FileNotFoundError as e:
            raise cli.InputError(f"image {image}: no such file") from e
        except (OSError, ValueError) as e:  # unreadable or not an image
            raise cli.InputError(f"image {image}: cannot read the image ({cli.one_line(e)})") from e

    def image_inputs(self, rows: Sequence[Sequence[ImageInput]]) -> dict[str, np.ndarray]:
        """Images per prompt row -> the model's image inputs: pixel_values float32 `[b, slots, H, W, 3]` (zeros in
        empty slots), image_mask bool `[b, slots]`, and for Idefics2 pixel_attention_mask bool `[b, slots, H, W]`
        (images zero-padded bottom/right to the largest height and width); {} when there is no image. A file that
        cannot be read or is over the size limits of `vlm_jax.data.image` is a `cli.InputError` naming it."""
        arrays = [[self._image(im) for im in row] for row in rows]
        if not any(arrays):
            return {}
        pixel_values, pixel_mask, image_mask = idefics2_processor.pad_images(arrays)
        out = {"pixel_values": pixel_values, "image_mask": image_mask}
        if self.idefics2:
            out[PIXEL_MASK_KEY] = pixel_mask
        return out

    def pixels(self, images: Sequence[ImageInput]) -> np.ndarray:
        """LLaVA: images (paths or PIL images) -> float32 `[n, H, W, 3]` (one size; Idefics2's images differ in
        size and need their mask: `image_inputs`). Errors as `image_inputs`."""
        if self.idefics2:
            raise ValueError("an Idefics2 handle's images differ in size: use image_inputs (pixels + pixel mask)")
        out = [self._image(im) for im in images]
        if not out:
            size = self.image_settings.get("crop_size") or (self.image_settings["image_size"],) * 2
            return np.zeros((0, *size, 3), np.float32)
        return np.stack(out)

    def prompt_ids(self, prompt: Prompt, n_images: int) -> list[int]:
        """Token ids of one prompt (text or ids, see the module docstring) with `n_images` image blocks expanded."""
        c = self.config
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise cli.InputError(f"{self.path or 'this model'} records no tokenizer (no tokenizer files, no "
                                     "tokenizer_spec.json): give the prompt as token ids, or a tokenizer")
            if self.idefics2:  # the whole string through its processor, images first by default
                if IMAGE_PLACEHOLDER not in prompt:
                    prompt = IMAGE_PLACEHOLDER * n_images + prompt
                if prompt.count(IMAGE_PLACEHOLDER) != n_images:
                    raise cli.UsageError(f"the prompt has {prompt.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} "
                                         f"placeholders but {n_images} images")
                return self.processor.encode(prompt)
            return text_prompt_ids(prompt, self.tokenizer, n_images, c.image_token_id, c.num_image_tokens)
        ids, found = expand_image_tokens(list(prompt), c.image_token_id, c.num_image_tokens)
        if found != n_images:
            raise cli.UsageError(f"the token ids mark {found} images but {n_images} images")
        return ids

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_id if self.tokenizer is not None else self.config.text_config.eos_token_id

    @property
    def pad_token_id(self) -> int:
        if self.config.pad_token_id is not None:
            return self.config.pad_token_id
        return self.tokenizer.pad_id if self.tokenizer is not None else 0

    def generate(self, prompts: Prompt | Sequence[Prompt], images: Sequence | None = None, *,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, mesh: jax.sharding.Mesh | None = None) -> dict | list[dict]:
        """Continues one prompt (`images`: its images) or a list of prompts (`images`: one list per prompt) by up
        to `max_new_tokens` tokens, greedy unless `temperature > 0`, stopping at EOS; batched in one call (with
        `mesh`, data-parallel over its devices). Returns `{"token_ids": new ids (EOS included), "text": decoded
        or None}` per prompt."""
        if self.params is None:
            raise ValueError("this VLM holds no params (built for input preparation only)")
        single = isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], (int, np.integer)))
        batch = [prompts] if single else list(prompts)
        per_prompt = [list(images or [])] if single else [list(x) for x in (images or [[] for _ in batch])]
        if len(per_prompt) != len(batch):
            raise ValueError(f"{len(batch)} prompts but {len(per_prompt)} image lists")
        ids = [self.prompt_ids(p, len(imgs)) for p, imgs in zip(batch, per_prompt)]
        input_ids, segment_ids = left_pad(ids, pad_token_id=self.pad_token_id)
        images = self.image_inputs(per_prompt)
        extra = {PIXEL_MASK_KEY: images[PIXEL_MASK_KEY]} if PIXEL_MASK_KEY in images else {}
        if mesh is None:
            if self._weights_of is not self.params:
                self._weights, self._weights_of = generation_weights(self.model, self.params), self.params
            extra["prepared_weights"] = self._weights
        out = generate(self.model, self.params, input_ids, segment_ids, images.get("pixel_values"),
                       images.get("image_mask"), max_new_tokens=max_new_tokens, eos_token_id=self.eos_token_id,
                       pad_token_id=self.pad_token_id, temperature=temperature, top_p=top_p, seed=seed, mesh=mesh,
                       **extra)
        results = [{"token_ids": row, "text": None if self.tokenizer is None else self.tokenizer.decode(row)}
                   for row in out.rows()]
        return results[0] if single else results


def idefics2_inputs(config: Idefics2Config, tokenizer: str | Tokenizer | None, sizes: tuple[int, int] | None = None
                    ) -> tuple[Tokenizer | None, idefics2_processor.Idefics2Processor | None]:
    """(tokenizer, processor) of an Idefics2 handle: `tokenizer` a folder (or an `HFTokenizer` of one) with
    Idefics2's `<fake_token_around_image>` and `<image>`; `sizes` = (longest, shortest) edge (default the
    original's 560 / 336). (None, None) without one (None or "byte": prompts as token ids)."""
    folder = getattr(tokenizer, "path", tokenizer)
    if folder is None or folder == "byte":
        return None, None
    if not isinstance(folder, (str, os.PathLike)):
        raise cli.UsageError(f"tokenizer {folder!r}: an Idefics2 model needs its Hugging Face tokenizer folder")
    folder = str(folder)
    longest, shortest = sizes or idefics2_processor.SIZES["default"]
    try:
        processor = idefics2_processor.Idefics2Processor(folder, config.num_image_tokens, longest, shortest)
    except ValueError as e:
        raise cli.InputError(f"tokenizer {folder}: {cli.one_line(e)}") from e
    if processor.image_token_id != config.image_token_id:
        raise cli.InputError(f"tokenizer {folder}: <image> is id {processor.image_token_id}, the model's "
                             f"image_token_id is {config.image_token_id}")
    return (make_tokenizer(folder) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer), processor


def load(ckpt: str | os.PathLike, *, dtype: str = "float32", attention_impl: str = "xla",
         tokenizer: str | Tokenizer | None = None, aspect: str = "pad",
         sharding: jax.sharding.Sharding | None = None, image_sizes: tuple[int, int] | None = None) -> VLM:
    """Loads a params checkpoint (`config.json` + `params/`, e.g. a run's `final/` or `hf-to-orbax` output) of
    either family for inference. Run-time options (`dtype`, `attention_impl`) apply now, never from the
    checkpoint; `tokenizer` (a spec, "byte" or a folder, or a Tokenizer) overrides the one the checkpoint records;
    params go to `sharding` (default: the first device; e.g. replicated over a mesh for data-parallel
    generation). An Idefics2 checkpoint's image sizes (longest, shortest edge): `image_sizes`, else its
    `preprocessor_config.json` `size` when it has one, else the original's 560 / 336."""
    ckpt = paths.as_path(ckpt)  # a local folder or a URL (gs://...)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: no such folder; give a vlm_jax params checkpoint (e.g. workdir/demo/final)")
    config = load_config(ckpt, dtype=dtype, attention_impl=attention_impl)
    spec = tokenizer if tokenizer is not None else tokenizer_spec(ckpt)
    params = load_params(ckpt, sharding=sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    if isinstance(config, Idefics2Config):
        longest, shortest = image_sizes or idefics2_processor.checkpoint_sizes(ckpt)
        tok, processor = idefics2_inputs(config, spec, (longest, shortest))
        return VLM(config, params, tok, {"longest_edge": longest, "shortest_edge": shortest}, aspect, str(ckpt),
                   processor)
    return VLM(config, params, None if spec is None else make_tokenizer(spec),
               checkpoint_image_settings(ckpt, config.vision_config.image_size), aspect, str(ckpt))
