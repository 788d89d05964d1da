"""Parameters of a model config without training: their shapes (`abstract_params`), their count
(`param_count`) and random values drawn on the host (`random_params`, for tests, benchmarks and
statistics without a checkpoint). Nothing here compiles an init."""
from __future__ import annotations

import math
from functools import partial

import flax.linen as nn
import jax
import numpy as np

from vlm_jax.models import clip, config as config_lib, idefics2, llama, llava, siglip


# Model families: top-level config class -> (Flax module, boxed-variables init, name of the text model's params
# subtree). One line per family.
FAMILIES = {config_lib.LlavaConfig: (llava.Llava, llava.init_variables, "language_model"),
            config_lib.Idefics2Config: (idefics2.Idefics2, idefics2.init_variables, "text_model")}
_TOWERS = {config_lib.VisionConfig: clip.init_variables, config_lib.TextConfig: llama.init_variables,
           config_lib.SiglipVisionConfig: siglip.init_variables}


def model_for(cfg):
    """The Flax module of a top-level model config (`Llava(cfg)` or `Idefics2(cfg)`)."""
    if type(cfg) not in FAMILIES:
        raise ValueError(f"no model family for {type(cfg).__name__}")
    return FAMILIES[type(cfg)][0](cfg)


def text_model_params(cfg, params) -> dict:
    """The text model's (Llama's) subtree of a family's params (`language_model` / `text_model`)."""
    return params[FAMILIES[type(cfg)][2]]


def init_variables(cfg, rng) -> dict:
    """Boxed `{"params": ...}` of the model `cfg` describes (a family or one of its towers)."""
    init = FAMILIES[type(cfg)][1] if type(cfg) in FAMILIES else _TOWERS.get(type(cfg))
    if init is None:
        raise ValueError(f"param_count: no model for {type(cfg).__name__}")
    return init(cfg, rng)


def abstract_params(cfg) -> dict:
    """Boxed `{"params": ...}` of ShapeDtypeStructs for a LlavaConfig, Idefics2Config or one of their towers."""
    return jax.eval_shape(partial(init_variables, cfg), jax.random.key(0))


def param_count(cfg) -> int:
    """Number of scalar parameters of the model `cfg` describes."""
    leaves = jax.tree_util.tree_leaves(nn.unbox(abstract_params(cfg)))
    return sum(math.prod(leaf.shape) for leaf in leaves)


def random_params(cfg, seed: int = 0, std: float = 0.02) -> dict:
    """N(0, std²) weights (norm scales 1) for every param of `cfg` (Llava/Vision/TextConfig), drawn in
    numpy from the abstract tree (no init compilation)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if jax.tree_util.keystr(path[-1:], simple=True) == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        return rng.normal(0.0, std, leaf.shape).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, nn.unbox(abstract_params(cfg))["params"])
