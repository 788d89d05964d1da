"""Histogram PNGs of the corpus statistics (matplotlib, headless Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402

_TITLES = {
    "images": ("Images per document", "images"),
    "text_pieces": ("Text pieces per document", "text pieces"),
    "tokens": ("Tokens per document (image tokens included)", "tokens"),
    "similarity": ("In-sample image similarity per document", "mean over image pairs of (CLIP' + SSIM) / 2"),
}


def write_histograms(values: Mapping[str, object], by_image_count: Mapping[str, Mapping], out_dir: str) -> list[str]:
    """Writes one PNG per non-empty distribution in `values` (name -> numbers) and a bar chart of the
    mean similarity per image count (`by_image_count`: count -> {"similarity", "documents"}).
    Returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, (title, xlabel) in _TITLES.items():
        v = np.asarray(values.get(name, []), np.float64)
        if v.size == 0:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        if name in ("images", "text_pieces") and v.max() - v.min() < 60:
            bins = np.arange(v.min() - 0.5, v.max() + 1.5)
        else:
            bins = min(50, max(5, int(np.sqrt(v.size))))
        ax.hist(v, bins=bins, color="tab:blue", edgecolor="white")
        ax.set(title=title, xlabel=xlabel, ylabel="documents")
        fig.tight_layout()
        path = os.path.join(out_dir, f"{name}_hist.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    groups = [(int(k), g) for k, g in by_image_count.items() if g["documents"]]
    if groups:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        counts = [k for k, _ in groups]
        ax.bar(counts, [g["similarity"] for _, g in groups], color="tab:orange")
        for k, g in groups:
            ax.annotate(f"n={g['documents']}", (k, g["similarity"]), ha="center", va="bottom", fontsize=8)
        ax.set(title="Mean in-sample similarity by images per document", xlabel="images per document",
               ylabel="similarity", xticks=counts, ylim=(0, 1.05))
        fig.tight_layout()
        path = os.path.join(out_dir, "similarity_by_image_count.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
