"""Hostile and newcomer inputs to the command lines: each answers with exit 2 (usage) or 1 (bad input) and ONE
`error:` line naming the file/record/field and the fix, never a traceback, and changes nothing outside its
output folder. Every CLI runs in-process (`main(argv)`); the fixtures are built here.

`data_prep.convert` has its own hostile table (tests/test_data_convert_hostile.py) and `vlm_jax.evaluate` its
own tests; they appear here in the newcomer table only.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tiny_hf_models as tiny
from data_testlib import document, write_corpus_dir
from vlm_jax.checkpoint import save_params
from vlm_jax.models.config import preset
from vlm_jax.models.init import random_params

REPO = Path(__file__).resolve().parents[1]


def _main(name: str):
    if name == "train":
        from vlm_jax.train import main
    elif name == "generate":
        from vlm_jax.generate import main
    elif name == "convert":
        from vlm_jax.convert.__main__ import main
    elif name == "stats":
        from data_prep.stats import main
    elif name == "param_count":
        from vlm_jax.models.param_count import main
    elif name == "data_convert":
        from data_prep.convert import main
    elif name == "evaluate":
        from vlm_jax.evaluate.__main__ import main
    else:
        raise KeyError(name)
    return main


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Everything the cases name, under one root: {name: path}."""
    root = tmp_path_factory.mktemp("hostile")
    p = {"root": root, "cwd": root / "cwd", "missing": root / "missing"}
    p["cwd"].mkdir()
    (root / "out").mkdir()
    cfg = preset("tiny")  # vocab 256, image token 255, 4 image tokens of 28 px
    p["ckpt"] = root / "ckpt"
    save_params(str(p["ckpt"]), random_params(cfg), cfg)
    p["hf"] = root / "hf"
    tiny.llava_hf(p["hf"], seed=1)
    p["img"] = root / "img.png"
    p["img"].write_bytes(_png(40, 30))
    p["strip"] = root / "strip.png"
    p["strip"].write_bytes(_png(1, 60000))
    p["notimg"] = root / "notes.png"
    p["notimg"].write_text("this is not a picture\n")
    p["empty"] = root / "empty.png"
    p["empty"].write_bytes(b"")
    p["fifo"] = root / "pipe.png"
    os.mkfifo(p["fifo"])
    p["dir"] = root / "adir"
    (p["dir"] / "sub").mkdir(parents=True)
    (p["dir"] / "readme.txt").write_text("hello")
    p["file"] = root / "afile.txt"
    p["file"].write_text("a file, not a folder\n")
    p["corpus"] = root / "corpus"
    write_corpus_dir(str(p["corpus"]), [document(i, 2) for i in range(4)])
    p["json"] = root / "docs.json"
    p["json"].write_text(json.dumps([{"images": ["img.png", None], "texts": [None, "a photo"]}]))
    configs = {
        "cfg_syntax": "def get_config(:\n",
        "cfg_noget": "X = 1\n",
        "cfg_raises": "def get_config():\n    raise RuntimeError('boom')\n",
        "cfg_import": "import no_such_module_xyz\n",
        "cfg_unknown": ("from vlm_jax.training.config import base_config\n"
                        "def get_config():\n    c = base_config()\n    c.learnin_rate = 1.0\n    return c\n"),
        "cfg_type": ("from vlm_jax.training.config import base_config\n"
                     "def get_config():\n    c = base_config()\n    c.data.shards = 5\n    return c\n"),
        "cfg_model_bad": "def get_config():\n    return {'text_config': {'hidden_size': 0}}\n",
    }
    for name, text in configs.items():
        p[name] = root / f"{name}.py"
        p[name].write_text(text)
    p["demo_cfg"] = REPO / "configs" / "demo.py"
    p["cfg_7b"] = REPO / "configs" / "llava_textbook_7b.py"
    p["model_cfg"] = REPO / "configs" / "llava_tiny.py"
    p["eval_cfg"] = REPO / "configs" / "eval" / "okvqa.py"
    return p


GEN = ["--ckpt", "{ckpt}", "--input-ids", "1,5,6", "--max-new-tokens", "2"]
GEN_IMG = ["--ckpt", "{ckpt}", "--input-ids", "1,255,5", "--max-new-tokens", "2", "--image"]
DEMO = ["--config", "{demo_cfg}", "--workdir", "{out}/wd"]
STATS = ["--out", "{out}/report.json"]

# (id, cli, argv, exit code, substring of the one `error:` line)
CASES = [
    # --- train: command line and config file
    ("train-no-args", "train", [], 2, "--config is required"),
    ("train-missing-config", "train", ["--config", "{missing}/c.py"], 1, "no such file"),
    ("train-config-is-folder", "train", ["--config", "{dir}"], 1, "is a folder, expected a file"),
    ("train-config-not-py", "train", ["--config", "{file}"], 1, "not a .py config file"),
    ("train-config-syntax", "train", ["--config", "{cfg_syntax}"], 1, "line 1: syntax error"),
    ("train-config-no-get-config", "train", ["--config", "{cfg_noget}"], 1, "defines no get_config()"),
    ("train-config-raises", "train", ["--config", "{cfg_raises}"], 1, "get_config() failed (RuntimeError: boom)"),
    ("train-config-import-fails", "train", ["--config", "{cfg_import}"], 1, "No module named 'no_such_module_xyz'"),
    ("train-config-unknown-field", "train", ["--config", "{cfg_unknown}", "--workdir", "{out}"], 2,
     "unknown field 'learnin_rate'"),
    ("train-config-wrong-type", "train", ["--config", "{cfg_type}", "--workdir", "{out}"], 1,
     "Could not override field 'shards'"),
    ("train-eval-config", "train", ["--config", "{eval_cfg}"], 2, "unknown field"),
    ("train-7b-missing-fields", "train", ["--config", "{cfg_7b}"], 2,
     "needs 3 fields set on the command line: --config.data.shards=..."),
    ("train-unknown-override", "train", DEMO + ["--config.optim.learnig_rate=1"], 2,
     "did you mean --config.optim.learning_rate?"),
    ("train-override-wrong-level", "train", DEMO + ["--config.seq_len=64"], 2, "did you mean --config.data.seq_len?"),
    ("train-override-bad-int", "train", DEMO + ["--config.global_batch_size=eight"], 2,
     "--config.global_batch_size=eight"),
    ("train-negative-batch", "train", DEMO + ["--config.global_batch_size=-8"], 2, "global_batch_size=-8 must be >= 1"),
    ("train-seq-len-zero", "train", DEMO + ["--config.data.seq_len=0"], 2, "data.seq_len=0 must be >= 1"),
    ("train-seq-len-too-short", "train", DEMO + ["--config.data.seq_len=10"], 2, "cannot hold one image"),
    ("train-lr-nan", "train", DEMO + ["--config.optim.learning_rate=nan"], 2,
     "optim.learning_rate=nan must be a finite number"),
    ("train-lr-inf", "train", DEMO + ["--config.optim.learning_rate=inf"], 2, "must be a finite number"),
    ("train-steps-negative", "train", DEMO + ["--config.num_train_steps=-5"], 2, "num_train_steps=-5 must be >= 0"),
    ("train-warmup-ratio", "train", DEMO + ["--config.optim.warmup_ratio=1.5"], 2, "optim.warmup_ratio=1.5 must be <= 1"),
    ("train-b2-one", "train", DEMO + ["--config.optim.b2=1.0"], 2, "optim.b2=1.0 must be < 1"),
    ("train-schedule-typo", "train", DEMO + ["--config.optim.schedule=cosin"], 2, "did you mean 'cosine'?"),
    ("train-dtype-typo", "train", DEMO + ["--config.dtype=bf16"], 2, "dtype='bf16' must be one of"),
    ("train-frozen-typo", "train", DEMO + ["--config.frozen=vision"], 2, "did you mean 'vision_tower'?"),
    ("train-accum-divides", "train", DEMO + ["--config.grad_accum_steps=3"], 2, "must be a multiple of grad_accum_steps=3"),
    ("train-two-minus-one-axes", "train", DEMO + ["--config.mesh.fsdp=-1"], 2, "at most one axis may be -1"),
    ("train-mesh-too-big", "train", DEMO + ["--config.mesh.data=64"], 2, "does not fit"),
    ("train-max-images", "train", DEMO + ["--config.data.max_images=20"], 2, "data.max_images=20 must be <="),
    ("train-model-override-typo", "train", DEMO + ["--config.model_overrides.text_config.hiden_size=8"], 2,
     "did you mean --config.model_overrides.text_config.hidden_size?"),
    ("train-model-override-zero", "train", DEMO + ["--config.model_overrides.text_config.hidden_size=0"], 2,
     "TextConfig.hidden_size=0: expected an integer >= 1"),
    ("train-no-shards", "train", DEMO + ["--config.demo_corpus.build=False"], 2, "data.shards is empty"),
    ("train-shards-missing", "train", DEMO + ["--config.demo_corpus.build=False", "--config.data.shards={missing}"], 1,
     "data.shards"),
    ("train-tokenizer-not-folder", "train", DEMO + ["--config.data.tokenizer={file}"], 1,
     "data.tokenizer {file}: is a file, expected a folder"),
    ("train-tokenizer-wrong-folder", "train", DEMO + ["--config.data.tokenizer={dir}"], 1, "no tokenizer files there"),
    ("train-init-missing", "train", DEMO + ["--config.init_checkpoint={missing}"], 1,
     "init_checkpoint {missing}: no such folder"),
    ("train-init-hf-folder", "train", DEMO + ["--config.init_checkpoint={hf}"], 1, "vlm_jax.convert hf-to-orbax"),
    ("train-init-wrong-folder", "train", DEMO + ["--config.init_checkpoint={dir}"], 1, "not a vlm_jax params checkpoint"),
    ("train-workdir-is-file", "train", ["--config", "{demo_cfg}", "--workdir", "{file}"], 1, "is a file, expected a folder"),
    ("train-workdir-url-demo", "train", ["--config", "{demo_cfg}", "--workdir", "gs://bucket/run"], 2,
     "--workdir gs://bucket/run: the demo corpus (ArrayRecord shards, local files only) is built in WORKDIR/corpus"),
    ("train-workdir-url-scheme", "train", ["--config", "{demo_cfg}", "--workdir", "ftp://host/run"], 2,
     "--workdir ftp://host/run: unsupported URL scheme ftp://"),
    ("train-compile-batch", "train", ["--config", "{demo_cfg}", "--compile_topology", "v5e-32"], 2,
     "--compile_topology v5e-32: global_batch_size=8 must be a multiple of data*fsdp (32) on its 32 chips; "
     "e.g. --config.global_batch_size=32"),
    ("train-heldout-missing", "train", DEMO + ["--config.demo_corpus.heldout_per_class=0",
                                               "--config.heldout.file={missing}"], 1, "heldout.file"),
    ("train-unknown-flag", "train", DEMO + ["--workdri", "x"], 2, "did you mean 'workdir'?"),
    ("train-positional", "train", DEMO + ["extra"], 2, "unexpected arguments ['extra']"),
    # --- generate
    ("generate-no-args", "generate", [], 2, "the following arguments are required: --ckpt"),
    ("generate-no-prompt", "generate", ["--ckpt", "{ckpt}"], 2, "one of the arguments --prompt --input-ids is required"),
    ("generate-ckpt-missing", "generate", ["--ckpt", "{missing}", "--input-ids", "1"], 1, "no such folder"),
    ("generate-ckpt-is-file", "generate", ["--ckpt", "{file}", "--input-ids", "1"], 1, "is a file, expected a folder"),
    ("generate-ckpt-wrong-folder", "generate", ["--ckpt", "{dir}", "--input-ids", "1"], 1, "config.json"),
    ("generate-ckpt-hf", "generate", ["--ckpt", "{hf}", "--input-ids", "1"], 1, "vlm_jax.convert hf-to-orbax"),
    ("generate-ids-too-big", "generate", ["--ckpt", "{ckpt}", "--input-ids", "1,256"], 1,
     "item 1 = 256 is outside the checkpoint's vocabulary [0, 256)"),
    ("generate-ids-negative", "generate", ["--ckpt", "{ckpt}", "--input-ids", "1,-3"], 1, "item 1 = -3 is outside"),
    ("generate-ids-not-int", "generate", ["--ckpt", "{ckpt}", "--input-ids", "1,x"], 2, "item 1 'x' is not an integer"),
    ("generate-ids-empty", "generate", ["--ckpt", "{ckpt}", "--input-ids", ","], 2, "--input-ids is empty"),
    ("generate-zero-tokens", "generate", GEN[:-1] + ["0"], 2, "--max-new-tokens must be >= 1"),
    ("generate-temperature-nan", "generate", GEN + ["--temperature", "nan"], 2, "--temperature must be a finite"),
    ("generate-top-p", "generate", GEN + ["--top-p", "0"], 2, "--top-p must be in (0, 1]"),
    ("generate-aspect-choice", "generate", GEN + ["--image-aspect-ratio", "crop"], 2, "invalid choice: 'crop'"),
    ("generate-prompt-no-tokenizer", "generate", ["--ckpt", "{ckpt}", "--prompt", "hi"], 1, "tokenizer"),
    ("generate-image-count", "generate", GEN + ["--image", "{img}"], 2, "mark 0 images but 1 --image"),
    ("generate-image-missing", "generate", GEN_IMG + ["{missing}.png"], 1, "missing.png: no such file"),
    ("generate-image-folder", "generate", GEN_IMG + ["{dir}"], 1, "not a regular file"),
    ("generate-image-fifo", "generate", GEN_IMG + ["{fifo}"], 1, "not a regular file"),
    ("generate-image-not-image", "generate", GEN_IMG + ["{notimg}"], 1, "cannot read the image"),
    ("generate-image-empty", "generate", GEN_IMG + ["{empty}"], 1, "cannot read the image"),
    ("generate-image-strip", "generate", GEN_IMG + ["{strip}"], 1, "aspect ratio 60000:1, over the limit of 50:1"),
    # --- vlm_jax.convert
    ("convert-no-args", "convert", [], 2, "the following arguments are required: command"),
    ("convert-bad-command", "convert", ["hf2orbax"], 2, "invalid choice: 'hf2orbax'"),
    ("convert-import-no-source", "convert", ["hf-to-orbax", "--out", "{out}"], 2, "needs --hf DIR"),
    ("convert-import-missing", "convert", ["hf-to-orbax", "--hf", "{missing}", "--out", "{out}/c"], 1, "missing"),
    ("convert-import-wrong-folder", "convert", ["hf-to-orbax", "--hf", "{dir}", "--out", "{out}/c"], 1, "adir"),
    ("convert-import-vlm-ckpt", "convert", ["hf-to-orbax", "--hf", "{ckpt}", "--out", "{out}/c"], 1, "ckpt"),
    ("convert-export-missing", "convert", ["orbax-to-hf", "--ckpt", "{missing}", "--out", "{out}/h"], 1, "missing"),
    ("convert-export-hf-folder", "convert", ["orbax-to-hf", "--ckpt", "{hf}", "--out", "{out}/h"], 1, "hf"),
    ("convert-import-out-is-file", "convert", ["hf-to-orbax", "--hf", "{hf}", "--out", "{file}"], 1,
     "--out {file}: is a file; give a new or empty folder"),
    ("convert-import-out-not-empty", "convert", ["hf-to-orbax", "--hf", "{hf}", "--out", "{ckpt}"], 1,
     "is a non-empty folder"),
    ("convert-export-out-not-empty", "convert", ["orbax-to-hf", "--ckpt", "{ckpt}", "--out", "{hf}"], 1,
     "is a non-empty folder"),
    ("convert-export-step-of-params", "convert", ["orbax-to-hf", "--ckpt", "{ckpt}", "--out", "{out}/h", "--step", "5"],
     1, "--step applies to training workdirs only"),
    ("convert-export-dtype", "convert", ["orbax-to-hf", "--ckpt", "{ckpt}", "--out", "{out}/h", "--dtype", "int8"], 2,
     "invalid choice: 'int8'"),
    ("convert-clip-is-llava", "convert", ["hf-to-orbax", "--clip", "{hf}", "--llm", "{hf}", "--out", "{out}/c"], 1,
     "is not a CLIP model"),
    ("convert-export-bad-shard-size", "convert", ["orbax-to-hf", "--ckpt", "{ckpt}", "--out", "{out}/h",
                                                  "--max-shard-size", "lots"], 2, "--max-shard-size"),
    # --- data_prep.stats
    ("stats-no-args", "stats", [], 2, "the following arguments are required: --data, --out"),
    ("stats-data-missing", "stats", ["--data", "{missing}"] + STATS, 1, "missing"),
    ("stats-data-wrong-folder", "stats", ["--data", "{dir}"] + STATS, 1, "adir"),
    ("stats-json-without-images", "stats", ["--data", "{json}"] + STATS, 2, "is JSON input: pass --images ROOT"),
    ("stats-out-is-folder", "stats", ["--data", "{corpus}", "--out", "{dir}"], 1, "adir"),
    ("stats-clip-ckpt-hf", "stats", ["--data", "{corpus}", "--clip-ckpt", "{hf}"] + STATS, 1,
     "vlm_jax.convert hf-to-orbax"),
    ("stats-clip-ckpt-missing", "stats", ["--data", "{corpus}", "--clip-ckpt", "{missing}"] + STATS, 1, "missing"),
    ("stats-tokenizer-wrong", "stats", ["--data", "{corpus}", "--tokenizer", "{dir}"] + STATS, 1, "tokenizer"),
    ("stats-batch-zero", "stats", ["--data", "{corpus}", "--batch-size", "0"] + STATS, 2, "--batch-size"),
    ("stats-max-images-negative", "stats", ["--data", "{corpus}", "--max-images", "-1"] + STATS, 2, "--max-images"),
    # --- models.param_count
    ("param-count-bad-preset", "param_count", ["--preset", "llava-7b"], 2, "did you mean 'llava-1.5-7b'?"),
    ("param-count-missing", "param_count", ["--config", "{missing}.py"], 1, "no such file"),
    ("param-count-training-config", "param_count", ["--config", "{demo_cfg}"], 1, "not a model config"),
    ("param-count-bad-model", "param_count", ["--config", "{cfg_model_bad}"], 1, "hidden_size=0"),
    ("param-count-both", "param_count", ["--preset", "tiny", "--config", "{model_cfg}"], 2, "not allowed with"),
]

# Every CLI a newcomer meets, each with no arguments / a missing file / a folder of the wrong kind / a checkpoint
# of the wrong family.
NEWCOMER = [
    ("train", "no args"), ("train", "missing file"), ("train", "wrong folder"), ("train", "wrong family"),
    ("generate", "no args"), ("generate", "missing file"), ("generate", "wrong folder"), ("generate", "wrong family"),
    ("convert", "no args"), ("convert", "missing file"), ("convert", "wrong folder"), ("convert", "wrong family"),
    ("stats", "no args"), ("stats", "missing file"), ("stats", "wrong folder"), ("stats", "wrong family"),
    ("param_count", "missing file"), ("param_count", "wrong family"),
    ("data_convert", "no args"), ("data_convert", "missing file"),
]
NEWCOMER_CASE = {
    ("train", "no args"): "train-no-args", ("train", "missing file"): "train-missing-config",
    ("train", "wrong folder"): "train-init-wrong-folder", ("train", "wrong family"): "train-eval-config",
    ("generate", "no args"): "generate-no-args", ("generate", "missing file"): "generate-ckpt-missing",
    ("generate", "wrong folder"): "generate-ckpt-wrong-folder", ("generate", "wrong family"): "generate-ckpt-hf",
    ("convert", "no args"): "convert-no-args", ("convert", "missing file"): "convert-import-missing",
    ("convert", "wrong folder"): "convert-import-wrong-folder", ("convert", "wrong family"): "convert-export-hf-folder",
    ("stats", "no args"): "stats-no-args", ("stats", "missing file"): "stats-data-missing",
    ("stats", "wrong folder"): "stats-data-wrong-folder", ("stats", "wrong family"): "stats-clip-ckpt-hf",
    ("param_count", "missing file"): "param-count-missing", ("param_count", "wrong family"): "param-count-training-config",
}
EXTRA_NEWCOMER_CASES = [
    ("data-convert-no-args", "data_convert", [], 2, "the following arguments are required"),
    ("data-convert-missing-input", "data_convert", ["--format", "textbook", "--input", "{missing}.json", "--images",
                                                     "{root}", "--out", "{out}/c"], 1, "missing.json"),
]
NEWCOMER_CASE.update({("data_convert", "no args"): "data-convert-no-args",
                      ("data_convert", "missing file"): "data-convert-missing-input"})
ALL = CASES + EXTRA_NEWCOMER_CASES


def _snapshot(root: Path, skip: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            continue
        for name in filenames + dirnames:
            path = Path(dirpath) / name
            st = path.lstat()  # a folder's entries are compared, not its own size or time
            out[str(path)] = (st.st_mode,) if path.is_dir() else (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("case_id, cli, argv, code, message", ALL, ids=[c[0] for c in ALL])
def test_hostile_input(fx, case_id, cli, argv, code, message, capsys, monkeypatch):
    monkeypatch.delenv("VLM_JAX_DEBUG", raising=False)
    monkeypatch.chdir(fx["cwd"])  # a CLI that wrote to a default relative path would change the snapshot
    out = fx["root"] / "out" / case_id
    names = {k: str(v) for k, v in fx.items()} | {"out": str(out)}
    argv = [a.format(**names) for a in argv]
    before = _snapshot(fx["root"], out)
    returned = _main(cli)(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert returned == code, err
    assert message.format(**names) in lines[0], lines[0]
    assert "internal error" not in lines[0], lines[0]
    assert _snapshot(fx["root"], out) == before, "files outside the output folder changed"


def test_newcomer_table_is_covered():
    ids = {c[0] for c in ALL}
    assert all(NEWCOMER_CASE[key] in ids for key in NEWCOMER)
    assert len(CASES) >= 60
