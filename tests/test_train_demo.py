"""A shortened `python -m vlm_jax.train --config configs/demo.py`: builds its corpus from bundled photos,
the loss falls, the held-out answers become more likely, and a non-finite loss stops naming the step."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(workdir, *overrides):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "vlm_jax.train", "--config", os.path.join(ROOT, "configs", "demo.py"),
               f"--workdir={workdir}", "--config.demo_corpus.train_documents=120",
               "--config.demo_corpus.heldout_per_class=3", "--config.progress_bar=false", *overrides]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def test_short_demo_learns(tmp_path):
    result = _run(tmp_path, "--config.num_train_steps=60", "--config.optim.warmup_steps=5",
                  "--config.log_every=20")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo corpus: 120 documents" in result.stdout and "held-out at step 60" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_step"] == 60
    assert summary["last_10pct_mean_loss"] < 0.7 * summary["first_10pct_mean_loss"]
    assert summary["heldout_end"]["answer_nll"] < 0.5 * summary["heldout_start"]["answer_nll"]
    assert summary["heldout_end"]["accuracy"] >= summary["heldout_start"]["accuracy"]
    assert os.listdir(tmp_path / "tensorboard")  # TensorBoard event files
    assert (tmp_path / "final" / "config.json").exists()
    _final_records_its_tokenizer(tmp_path)
    _export_training_workdir_equals_final(tmp_path)


def _final_records_its_tokenizer(workdir):
    """The demo's final params say they use the byte tokenizer, so generate takes a text prompt with no extra flag;
    the model config holds no run-time option of the run; the run's own config file has its own name."""
    from vlm_jax.checkpoint import RUN_CONFIG_FILE, tokenizer_spec
    from vlm_jax.generate import main as generate_main

    assert tokenizer_spec(workdir / "final") == "byte"
    stored = json.loads((workdir / "final" / "config.json").read_text())
    assert "dtype" not in stored["text_config"] and "attention_impl" not in stored["vision_config"]
    assert "train" in json.loads((workdir / RUN_CONFIG_FILE).read_text())
    image = next((workdir / "corpus" / "images" / "heldout").iterdir())
    assert generate_main(["--ckpt", str(workdir / "final"), "--image", str(image), "--prompt", "<image> This is",
                          "--max-new-tokens", "4"]) == 0


def _export_training_workdir_equals_final(workdir):
    """`orbax-to-hf` takes the run's workdir (latest step, or --step) and writes what the final params give."""
    import pytest
    from safetensors.numpy import load_file

    from vlm_jax.convert.orbax_to_hf import export
    from vlm_jax.checkpoint import CheckpointError, tokenizer_spec

    export(workdir, workdir / "hf_latest")
    export(workdir / "final", workdir / "hf_final")
    latest, final = (load_file(str(workdir / d / "model.safetensors")) for d in ("hf_latest", "hf_final"))
    assert latest.keys() == final.keys() and len(latest) > 10
    for name in final:
        assert (latest[name] == final[name]).all(), name
    assert tokenizer_spec(workdir / "hf_latest") == tokenizer_spec(workdir / "hf_final") == "byte"
    with pytest.raises(CheckpointError, match="no checkpoint for step 7"):
        export(workdir, workdir / "hf_bad", step=7)
    with pytest.raises(CheckpointError, match="training workdirs only"):
        export(workdir / "final", workdir / "hf_bad", step=60)


def test_nan_loss_stops_naming_the_step(tmp_path):
    result = _run(tmp_path, "--config.num_train_steps=3", "--config.optim.warmup_steps=0",
                  "--config.optim.learning_rate=1e30", "--config.optim.max_grad_norm=0",
                  "--config.demo_corpus.heldout_per_class=0", "--config.save_final_params=false")
    assert result.returncode != 0
    assert "non-finite loss at step" in result.stdout + result.stderr
