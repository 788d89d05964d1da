"""`python -m vlm_jax.train` killed with SIGKILL mid-run and rerun continues exactly: the loss sequence of
the resumed run equals an uninterrupted run's, step for step (model, optimizer and data iterator restored).
Preempted with SIGTERM, it saves at the next step boundary and exits 0, and the rerun continues the same way."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12


def _command(workdir, corpus):
    return [sys.executable, "-m", "vlm_jax.train", "--config", os.path.join(ROOT, "configs", "demo.py"),
            f"--workdir={workdir}", f"--config.demo_corpus.dir={corpus}", "--config.demo_corpus.train_documents=48",
            "--config.demo_corpus.heldout_per_class=0", f"--config.num_train_steps={STEPS}",
            "--config.optim.warmup_steps=2", "--config.checkpoint.save_every=4", "--config.checkpoint.keep=2",
            "--config.progress_bar=false", "--config.log_every=4", "--config.save_final_params=false"]


def _env(root):
    # The rerun loads the programs the first runs compiled from JAX's persistent cache (saves time only).
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _records(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _start(workdir, corpus, log):
    return subprocess.Popen(_command(workdir, corpus), cwd=ROOT, env=_env(corpus.parent), stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The demo corpus and an uninterrupted run's metrics (started in the background)."""
    root = tmp_path_factory.mktemp("resume")
    corpus = root / "corpus"
    subprocess.run([sys.executable, "-c", f"from vlm_jax import demo_corpus; demo_corpus.build({str(corpus)!r}, "
                    "train_documents=48, heldout_per_class=0)"], cwd=ROOT, env=_env(root), check=True)
    log = open(root / "full.log", "w")
    # The reference run also traces 2 steps with jax.profiler (tracing does not change any number).
    process = subprocess.Popen(_command(root / "full", corpus) + ["--config.profile_steps=2"], cwd=ROOT,
                               env=_env(root), stdout=log, stderr=subprocess.STDOUT)
    yield corpus, process, root
    process.wait()
    log.close()


def _reference_records(reference):
    corpus, process, root = reference
    assert process.wait() == 0, (root / "full.log").read_text()[-3000:]
    return _records(root / "full")


def _interrupt_and_rerun(reference, tmp_path, sig):
    """Starts a run, sends `sig` after the step-4 checkpoint and step 6, reruns; returns (exit code, rerun)."""
    corpus = reference[0]
    victim_dir = tmp_path / "victim"
    with open(tmp_path / "victim.log", "w") as victim_log:
        victim = _start(victim_dir, corpus, victim_log)
        deadline = time.time() + 300
        # Interrupt after the step-4 checkpoint is written and a few more steps ran (the next save is at 8).
        while not (os.path.isdir(victim_dir / "checkpoints" / "4") and len(_records(victim_dir)) >= 6):
            assert victim.poll() is None, (tmp_path / "victim.log").read_text()[-3000:]
            assert time.time() < deadline, "run did not reach step 6"
            time.sleep(0.05)
        victim.send_signal(sig)
        code = victim.wait()
    assert len(_records(victim_dir)) < STEPS
    rerun = subprocess.run(_command(victim_dir, corpus), cwd=ROOT, env=_env(corpus.parent), capture_output=True,
                           text=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    return code, rerun, victim_dir


def _assert_same_losses(got, expected):
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["step"] for r in expected] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in expected], rtol=1e-6)
    np.testing.assert_allclose([r["lr"] for r in got], [r["lr"] for r in expected], rtol=1e-6)
    # the data position was restored too: the same number of documents was read
    assert got[-1]["loader/documents_read"] == expected[-1]["loader/documents_read"]


def test_sigkill_and_rerun_continues_exactly(reference, tmp_path):
    code, rerun, killed = _interrupt_and_rerun(reference, tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert "resumed from" in rerun.stdout
    summary = json.loads((killed / "summary.json").read_text())
    assert 4 <= summary["start_step"] < STEPS and summary["final_step"] == STEPS
    _assert_same_losses(_records(killed), _reference_records(reference))
    assert sorted(os.listdir(killed / "checkpoints")) == ["12", "8"]  # keep=2


def test_sigterm_saves_at_the_next_step_exits_0_and_rerun_continues(reference, tmp_path):
    code, rerun, victim = _interrupt_and_rerun(reference, tmp_path, signal.SIGTERM)
    assert code == 0, (tmp_path / "victim.log").read_text()[-3000:]
    log = (tmp_path / "victim.log").read_text()
    assert "SIGTERM received: saved step" in log
    saved = int(log.split("SIGTERM received: saved step ")[1].split()[0].rstrip(","))
    assert 6 <= saved < STEPS  # the step after the signal, not the last periodic save (4)
    assert f"resumed from {victim}/checkpoints/{saved}" in rerun.stdout
    summary = json.loads((victim / "summary.json").read_text())
    assert summary["start_step"] == saved and summary["final_step"] == STEPS
    _assert_same_losses(_records(victim), _reference_records(reference))


def test_profile_steps_write_a_trace(reference):
    _reference_records(reference)
    traces = list((reference[2] / "full" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
