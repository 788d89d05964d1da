"""In-sample image similarity of a document's images, two protocols.

`original` (the default) is how the original computes the paper's table (`llava/dataset/
inbatch_clip_score.py`, `inbatch_ssim_score.py`, `check_inbatchsim.py`), for every pair (i < j) of a
document's images:
  clip_sum = sum of (cos(f_i, f_j) + 1) / 2    f = projected CLIP features (`get_image_features` of
                                               clip-vit-large-patch14-336), CLIP preprocessing, no padding
  ssim_sum = sum of SSIM(grey(i), grey(resize(j)))  OpenCV-decoded BGR images; j resized to i's size with
                                               `cv2.INTER_AREA` when the shapes differ, then `BGR2GRAY`,
                                               scikit-image `structural_similarity` with its defaults;
                                               any failing pair sets the document's ssim_sum to 0
  score = (ssim_sum + (clip_sum + 1) / 2) / 2 / C(image_num, 2)
with `image_num` the document's own `image_num` field (else its image count); `(clip_sum + 1) / 2` is
applied to the sum a second time and the division uses `image_num`, exactly as `check_inbatchsim.py`
does. A document with an image that does not decode is left out (the original's `clip_success`).
The table is the mean score per `image_num` (4-11).

`standard` (vlm_jax's own, kept as an option): for every pair (i < j):
  clip = (cos(f_i, f_j) + 1) / 2        f = CLIP image features (projected if the tower has a projection,
                                        else the post-layernorm CLS), cos in [-1, 1] mapped to [0, 1]
  ssim = SSIM(grey_i, resize(grey_j))   8-bit grey images (ITU-R 601 luma), the second resized (bilinear)
                                        to the first one's size, scikit-image `structural_similarity`
  pair = (clip + ssim) / 2
and the document's similarity is the mean over its pairs, the table the mean per image count.
CLIP features come from the project's Flax `CLIPVisionTower` (`ClipFeaturizer`: batched, jitted,
fixed batch shape so it compiles once).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

from vlm_jax.data.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, preprocess_image
from vlm_jax.models.clip import image_feature_fn
from vlm_jax.models.config import VisionConfig

PROTOCOLS = ("original", "standard")


def grey(img: Image.Image) -> np.ndarray:
    """8-bit grey image `uint8 [H, W]` (PIL "L": 0.299 R + 0.587 G + 0.114 B, as OpenCV's BGR2GRAY)."""
    return np.asarray(img.convert("L"))


def ssim_pair(grey_a: np.ndarray, grey_b: np.ndarray) -> float:
    """SSIM of two grey `uint8 [H, W]` images; `grey_b` is first resized (bilinear) to `grey_a`'s size.

    scikit-image's default 7x7 window; for images under 7 px on a side the window shrinks to the
    largest odd size that fits (scikit-image refuses windows larger than the image).
    """
    height, width = grey_a.shape
    if grey_b.shape != grey_a.shape:
        grey_b = np.asarray(Image.fromarray(grey_b).resize((width, height), Image.BILINEAR))
    win = min(7, min(height, width) - (1 - min(height, width) % 2))
    if win < 3:
        raise ValueError(f"image of {width}x{height} px is too small for SSIM (needs >= 3 px per side)")
    return float(structural_similarity(grey_a, grey_b, win_size=win, data_range=255))


def clip_pair(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """CLIP cosine similarity of two feature vectors `[d]`, mapped from [-1, 1] to [0, 1]."""
    a, b = np.asarray(feat_a, np.float64), np.asarray(feat_b, np.float64)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return (cos + 1.0) / 2.0


@dataclasses.dataclass(frozen=True)
class DocumentSimilarity:
    """A document's in-sample similarity: means over its `pairs` image pairs (None with < 2 images)."""

    pairs: int
    similarity: float | None
    clip: float | None
    ssim: float | None


def document_similarity(features: np.ndarray, greys: Sequence[np.ndarray]) -> DocumentSimilarity:
    """Mean over all pairs i < j of (clip_pair + ssim_pair) / 2; `features` `[n, d]`, `greys` n images."""
    if len(features) != len(greys):
        raise ValueError(f"{len(features)} feature rows for {len(greys)} images")
    pairs = list(itertools.combinations(range(len(greys)), 2))
    if not pairs:
        return DocumentSimilarity(0, None, None, None)
    clips = np.array([clip_pair(features[i], features[j]) for i, j in pairs])
    ssims = np.array([ssim_pair(greys[i], greys[j]) for i, j in pairs])
    return DocumentSimilarity(len(pairs), float(np.mean((clips + ssims) / 2)), float(clips.mean()), float(ssims.mean()))


@dataclasses.dataclass(frozen=True)
class OriginalSimilarity:
    """A document's sums as the original's scripts compute them (module docstring)."""

    pairs: int
    clip_sum: float
    ssim_sum: float
    ssim_failed: bool


def decode_bgr(data: bytes) -> np.ndarray | None:
    """Encoded image bytes -> `uint8 [H, W, 3]` BGR as `cv2.imread` gives it; None if OpenCV cannot decode."""
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def ssim_pair_original(bgr_a: np.ndarray, bgr_b: np.ndarray) -> float:
    """`inbatch_ssim_score.compare_images`: b resized (INTER_AREA) to a's size if shapes differ, grey, SSIM."""
    import cv2

    if bgr_a.shape != bgr_b.shape:
        bgr_b = cv2.resize(bgr_b, (bgr_a.shape[1], bgr_a.shape[0]), interpolation=cv2.INTER_AREA)
    grey_a, grey_b = cv2.cvtColor(bgr_a, cv2.COLOR_BGR2GRAY), cv2.cvtColor(bgr_b, cv2.COLOR_BGR2GRAY)
    return float(structural_similarity(grey_a, grey_b, full=True)[0])


def original_sums(features: np.ndarray, bgr_images: Sequence[np.ndarray]) -> OriginalSimilarity:
    """Sums over all pairs i < j (module docstring); `features` `[n, d]` projected CLIP features."""
    if len(features) != len(bgr_images):
        raise ValueError(f"{len(features)} feature rows for {len(bgr_images)} images")
    pairs = list(itertools.combinations(range(len(bgr_images)), 2))
    clip_sum = float(sum(clip_pair(features[i], features[j]) for i, j in pairs))
    ssim_sum, failed = 0.0, False
    for i, j in pairs:
        try:
            ssim_sum += ssim_pair_original(bgr_images[i], bgr_images[j])
        except Exception:  # noqa: BLE001 - the original catches everything, then zeroes the document's sum
            ssim_sum, failed = 0.0, True
            break
    return OriginalSimilarity(len(pairs), clip_sum, ssim_sum, failed)


def original_score(sums: OriginalSimilarity, image_num: int) -> dict[str, float] | None:
    """`check_inbatchsim.py`'s per-document score and its halves, or None when `image_num` < 2."""
    if image_num < 2:
        return None
    combinations = image_num * (image_num - 1) / 2
    clip = (sums.clip_sum + 1) / 2 / combinations
    ssim = sums.ssim_sum / combinations
    return {"similarity": (clip + ssim) / 2, "clip": clip, "ssim": ssim}


def random_vision_tower(config: VisionConfig, seed: int = 0) -> dict:
    """Random N(0, 0.02²) tower params (norm scales 1), drawn in numpy without compiling an init: the
    features carry no meaning (demos, tests, and the no-checkpoint case, which the report flags)."""
    from vlm_jax.models.init import random_params

    return random_params(config, seed)


class ClipFeaturizer:
    """PIL images -> CLIP features `float32 [n, d]` with the project's Flax CLIP, `batch_size` per call.

    Images are CLIP-preprocessed (shortest-side resize + center crop, no square padding: plain
    `CLIPImageProcessor`, as a CLIP similarity uses), then go through `clip.image_feature_fn` (one jitted
    forward of fixed batch shape). Features: `image_embeds` when the tower has a projection, else `pooled`.
    """

    def __init__(self, config: VisionConfig, params: dict, batch_size: int = 16, source: str = ""):
        self.config, self.batch_size, self.source = config, int(batch_size), source
        self._features = image_feature_fn(config, params, self.batch_size)
        self.feature = "image_embeds (projected)" if config.has_projection else "pooled (post-layernorm CLS)"

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """CLIP input `float32 [S, S, 3]` for one image."""
        return preprocess_image(img, self.config.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, aspect="none")

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Features `float32 [len(images), d]`."""
        size = self.config.image_size
        pixels = [self.preprocess(img) for img in images]
        return self._features(np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.float32))

