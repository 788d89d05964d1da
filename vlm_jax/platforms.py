"""Which JAX platforms to try when the user did not say (`JAX_PLATFORMS` unset).

With libtpu installed (the `tpu` and `test` extras) on a machine without TPU chips, JAX would still load
libtpu at start-up, print several lines of libtpu warnings and take its single-process lock before it
falls back to CPU. `default_platforms()` (run when `vlm_jax` is imported) sets `JAX_PLATFORMS=cpu` in
exactly that case: libtpu present, no TPU chip on the PCI bus (Google vendor id 0x1ae0), no CUDA plugin.
An explicit `JAX_PLATFORMS` always wins; on Cloud TPU VMs and GPU machines nothing changes.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

_GOOGLE_PCI_VENDOR = "0x1ae0"


def has_tpu_chips() -> bool:
    """True when a Google TPU device sits on this host's PCI bus (Linux sysfs)."""
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(path) as f:
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def default_platforms() -> None:
    """Sets `JAX_PLATFORMS=cpu` when libtpu is installed but this host has no TPU and no CUDA plugin."""
    if os.environ.get("JAX_PLATFORMS") or not _installed("libtpu"):
        return
    if has_tpu_chips() or _installed("jax_cuda12_plugin") or _installed("jax_cuda13_plugin"):
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax = sys.modules.get("jax")
    if jax is not None:  # imported before vlm_jax: its config read the environment already
        try:
            jax.config.update("jax_platforms", "cpu")
        except RuntimeError:  # backends already initialised: too late, leave them
            pass
