"""The notebooks run top to bottom (nbclient, python3 kernel, their own folder as working directory, as Jupyter
and Colab start them) and contain their figures, so they cannot rot; their install cell installs the checkout."""

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


def execute(name: str, timeout: int = 300) -> nbformat.NotebookNode:
    """Runs notebooks/<name> in a fresh kernel whose working directory is notebooks/."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    saved = os.environ.get("PYTHONPATH")
    # The kernel (and the subprocesses it starts) inherit it: `vlm_jax` is importable without an install.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved]))
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    return nb


def png_outputs(nb: nbformat.NotebookNode) -> list[int]:
    """Indices of the code cells that show at least one image/png output."""
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            and any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))]


def test_explore_corpus_runs_and_shows_figures():
    nb = execute("explore_corpus.ipynb")
    sources = [c.source for c in nb.cells]
    figures = png_outputs(nb)
    # Documents (2 figures in one cell), the packed-row view, and the 5 statistics plots.
    doc_cell = next(i for i, s in enumerate(sources) if "show_document(documents[0])" in s)
    packed_cell = next(i for i, s in enumerate(sources) if "token kinds in one packed row" in s)
    plots_cell = next(i for i, s in enumerate(sources) if 'for path in report["plots"]' in s)
    assert {doc_cell, packed_cell, plots_cell} <= set(figures)
    assert sum("image/png" in o.get("data", {}) for o in nb.cells[plots_cell].outputs) == 5
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "'video_id': 'cafe_chem'" in text and "'frame_index': 5" in text  # decoded keyframe names
    assert "RANDOM-INIT" in text  # says clearly which CLIP was used


# What quickstart.ipynb runs, and the branch that brings it (until all are merged the test fails, by design).
QUICKSTART_NEEDS = {
    "vlm_jax.train": "train", "vlm_jax.training.heldout": "train",
    "vlm_jax.generate": "generate", "vlm_jax.inference.model": "house",
    "vlm_jax.evaluate.run": "evalrun", "vlm_jax.evaluate.run_config": "evalrun",
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def test_quickstart_runs_and_shows_figures():
    missing = [f"{module} (branch {branch})" for module, branch in QUICKSTART_NEEDS.items() if not _importable(module)]
    if missing:
        pytest.fail("quickstart.ipynb needs modules this checkout lacks: " + ", ".join(missing))
    nb = execute("quickstart.ipynb", timeout=600)
    sources = [c.source for c in nb.cells]
    loss_cell = next(i for i, s in enumerate(sources) if "demo training loss" in s)
    answer_cell = next(i for i, s in enumerate(sources) if "vlm.generate(" in s)
    assert {loss_cell, answer_cell} <= set(png_outputs(nb))
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert '"shots": 2' in text  # the 2-shot evaluation ran and printed its scores
    assert "transformers:" in text and "vlm_jax:" in text  # the HF export loaded and generated


def test_install_cell_installs_this_checkout(tmp_path):
    """The notebooks' install cell, run where vlm_jax is not importable, installs the checkout the notebook sits
    in (`pip install -e`; offline here: the test's own packages, no dependencies, no build isolation), and the
    install puts `vlm_jax` and `data_prep` into site-packages but no `configs` package."""
    cells = [json.loads((NOTEBOOKS / n).read_text())["cells"][1]["source"] for n in ("quickstart.ipynb",
                                                                                      "explore_corpus.ipynb")]
    assert cells[0] == cells[1]  # one install cell
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # pip and setuptools of the test environment, as plain path entries (its editable vlm_jax stays invisible).
    Path(site, "test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["VLM_JAX_PIP_ARGS"] = "--no-deps --no-build-isolation --no-index"
    proc = subprocess.run([str(python), "-c", "".join(cells[0])], cwd=NOTEBOOKS, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"vlm_jax checkout: {REPO}" in proc.stdout
    probe = ("import importlib.util, vlm_jax, data_prep; print(vlm_jax.__file__); "
             "print(importlib.util.find_spec('configs'))")
    out = subprocess.run([str(python), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(REPO / "vlm_jax" / "__init__.py"), "None"]
