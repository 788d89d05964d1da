"""A real multi-process run on one machine: 2 processes x 4 CPU devices joined through a localhost coordinator
(`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`; CPU collectives over gloo), one 8-device
mesh. SIGTERM to ONE process stops both after the same step with a saved checkpoint and exit 0; rerunning
both continues with the losses of an uninterrupted 2-process run, step for step."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir, corpus, logs):
    """Starts processes 0 and 1 of one job; returns the Popen objects."""
    port = _free_port()
    procs = []
    for i in range(2):
        # No persistent compilation cache here: a second multi-process CPU run loading cached programs hung.
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(i), XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", "vlm_jax.train", "--config", os.path.join(ROOT, "configs", "demo.py"),
               f"--workdir={workdir}", f"--config.demo_corpus.dir={corpus}", "--config.demo_corpus.train_documents=48",
               "--config.demo_corpus.heldout_per_class=0", f"--config.num_train_steps={STEPS}",
               "--config.optim.warmup_steps=2", "--config.checkpoint.save_every=100", "--config.log_every=2",
               "--config.save_final_params=false", "--config.tensorboard=false"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[i], stderr=subprocess.STDOUT))
    return procs


def _records(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _run(workdir, corpus, tmp_path, name, *, sigterm_process_1_after=None):
    logs = [open(tmp_path / f"{name}.p{i}.log", "w") for i in range(2)]
    procs = _launch(workdir, corpus, logs)
    try:
        if sigterm_process_1_after is not None:
            deadline = time.time() + 600
            while len(_records(workdir)) < sigterm_process_1_after:
                assert all(p.poll() is None for p in procs), (tmp_path / f"{name}.p0.log").read_text()[-3000:]
                assert time.time() < deadline
                time.sleep(0.05)
            procs[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    text = [(tmp_path / f"{name}.p{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], text[0][-3000:] + text[1][-3000:]
    return text


def test_two_processes_sigterm_one_and_resume(tmp_path):
    corpus = tmp_path / "corpus"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", f"from vlm_jax import demo_corpus; demo_corpus.build({str(corpus)!r}, "
                    "train_documents=48, heldout_per_class=0)"], cwd=ROOT, env=env, check=True)
    full = tmp_path / "full"
    logs = _run(full, corpus, tmp_path, "full")
    for i, text in enumerate(logs):  # one line per host naming its process and devices
        assert f"process {i}/2: 4 local cpu device(s)" in text
    assert "mesh {'data': 8, 'fsdp': 1, 'tensor': 1} on 8 cpu device(s), 2 process(es)" in logs[0]

    stopped = tmp_path / "stopped"
    logs = _run(stopped, corpus, tmp_path, "stopped", sigterm_process_1_after=3)
    saved = [int(t.split("SIGTERM received: saved step ")[1].split()[0].rstrip(","))
             for t in logs if "SIGTERM received" in t]
    assert len(saved) == 1 and 3 <= saved[0] < STEPS  # logged by process 0, agreed by both
    assert sorted(os.listdir(stopped / "checkpoints")) == [str(saved[0])]
    logs = _run(stopped, corpus, tmp_path, "rerun")
    assert f"resumed from {stopped}/checkpoints/{saved[0]}" in logs[0]

    expected, got = _records(full), _records(stopped)
    assert [r["step"] for r in got] == [r["step"] for r in expected] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in expected], rtol=1e-6)
    assert got[-1]["loader/documents_read"] == expected[-1]["loader/documents_read"]
