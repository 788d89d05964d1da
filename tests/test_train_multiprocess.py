"""A real multi-process run on one machine: 2 processes x 4 CPU devices joined through a localhost coordinator
(`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`; CPU collectives over gloo), one 8-device
mesh. Its losses equal those of 1 process x 8 devices with the same data streams. SIGTERM to ONE process stops
both after the same step with a saved checkpoint and exit 0; rerunning both, or 1 process x 8 devices, continues
with the losses of the uninterrupted run, step for step (the state reshards, the data streams resume), and
scores the held-out set as 1 process does. The few-shot evaluation on 2 processes answers every question once, in order, and writes what 1 process writes."""
import json
import os
import shutil
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


def _train_args(workdir, corpus, extra=()):
    return ["vlm_jax.train", "--config", os.path.join(ROOT, "configs", "demo.py"), f"--workdir={workdir}",
            "--config.demo_corpus.build=false", f"--config.data.shards={corpus}/shards",
            f"--config.num_train_steps={STEPS}", "--config.optim.warmup_steps=2", "--config.checkpoint.save_every=100",
            "--config.log_every=2", "--config.save_final_params=false", "--config.tensorboard=false", *extra]


def _launch(module_args, logs):
    """Starts the processes of one job (one per log; 8 CPU devices in all) running `python -m MODULE ARGS`;
    returns the Popen objects."""
    port = _free_port()
    procs = []
    n = len(logs)
    for i in range(n):
        # No persistent compilation cache here: a second multi-process CPU run loading cached programs hung.
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // n}", JAX_PLATFORMS="cpu")
        if n > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i))
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        procs.append(subprocess.Popen([sys.executable, "-m", *module_args], cwd=ROOT, env=env, stdout=logs[i], stderr=subprocess.STDOUT))
    return procs


def _records(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _run(workdir, corpus, tmp_path, name, *, processes=2, extra=(), sigterm_process_1_after=None, module_args=None):
    logs = [open(tmp_path / f"{name}.p{i}.log", "w") for i in range(processes)]
    procs = _launch(module_args or _train_args(workdir, corpus, extra), logs)
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
    text = [(tmp_path / f"{name}.p{i}.log").read_text() for i in range(processes)]
    assert codes == [0] * processes, "".join(t[-3000:] for t in text)
    return text


def _assert_same_run(got, expected):
    assert [r["step"] for r in got] == [r["step"] for r in expected] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in expected], rtol=1e-5)
    assert got[-1]["loader/documents_read"] == expected[-1]["loader/documents_read"]


def test_two_processes_equal_one_sigterm_one_resume_on_two_or_one_and_evaluate(tmp_path):
    corpus = tmp_path / "corpus"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", f"from vlm_jax import demo_corpus; demo_corpus.build({str(corpus)!r}, "
                    "train_documents=48, heldout_per_class=1)"], cwd=ROOT, env=env, check=True)
    one = tmp_path / "one"  # the reference: 1 process x 8 devices, uninterrupted, with the 2 data streams
    heldout = f"--config.heldout.file={corpus}/heldout.jsonl"  # scored before and after training
    logs = _run(one, corpus, tmp_path, "one", processes=1,
                extra=["--config.data.streams=2", "--config.save_final_params=true", heldout])
    assert "mesh {'data': 8, 'fsdp': 1, 'tensor': 1} on 8 cpu device(s), 1 process(es)" in logs[0]

    stopped = tmp_path / "stopped"
    logs = _run(stopped, corpus, tmp_path, "stopped", sigterm_process_1_after=3)  # data.streams: 2 processes
    for i, text in enumerate(logs):  # one line per host naming its process and devices
        assert f"process {i}/2: 4 local cpu device(s)" in text
    assert "mesh {'data': 8, 'fsdp': 1, 'tensor': 1} on 8 cpu device(s), 2 process(es)" in logs[0]
    saved = [int(t.split("SIGTERM received: saved step ")[1].split()[0].rstrip(","))
             for t in logs if "SIGTERM received" in t]
    assert len(saved) == 1 and 3 <= saved[0] < STEPS  # logged by process 0, agreed by both
    assert sorted(os.listdir(stopped / "checkpoints")) == [str(saved[0])]
    np.testing.assert_allclose([r["loss"] for r in _records(stopped)],  # 2 processes' losses = 1 process's
                               [r["loss"] for r in _records(one)[:saved[0]]], rtol=1e-5)
    on_one = tmp_path / "stopped_then_one"
    shutil.copytree(stopped, on_one)
    logs = _run(stopped, corpus, tmp_path, "rerun", extra=[heldout])
    assert f"resumed from {stopped}/checkpoints/{saved[0]}" in logs[0]
    _assert_same_run(_records(stopped), _records(one))
    held = [json.loads((run / "summary.json").read_text())["heldout_end"] for run in (stopped, one)]
    assert held[0]["questions"] == 12 and held[0]["accuracy"] == held[1]["accuracy"]
    np.testing.assert_allclose(held[0]["answer_nll"], held[1]["answer_nll"], rtol=1e-5)
    logs = _run(on_one, corpus, tmp_path, "rerun_one", processes=1)  # the 2 streams come from the checkpoint
    assert f"resumed from {on_one}/checkpoints/{saved[0]}" in logs[0]
    _assert_same_run(_records(on_one), _records(one))

    # Few-shot evaluation of the trained model on the 12 held-out questions: 2 processes x 4 devices split the
    # questions, gather every answer once and in order; process 0 writes the same files as 1 process x 8.
    def evaluate(out, processes):
        args = ["vlm_jax.evaluate", "--config", os.path.join(ROOT, "configs", "eval", "demo.py"), "--ckpt",
                str(one / "final"), f"--config.eval_split.path={corpus}/heldout.jsonl",
                f"--config.demo_split.path={corpus}/heldout.jsonl", "--config.shots=1", "--config.batch_size=2",
                f"--config.output_dir={out}"]
        _run(None, None, tmp_path, out.name, processes=processes, module_args=args)
        return [json.loads(line) for line in (out / "demo_1shot_rices.predictions.jsonl").read_text().splitlines()], \
            json.loads((out / "demo_1shot_rices.scores.json").read_text())

    records2, scores2 = evaluate(tmp_path / "eval2", 2)
    records1, scores1 = evaluate(tmp_path / "eval1", 1)
    assert [r["question_id"] for r in records2] == [str(i) for i in range(1, 13)]
    assert records2 == records1
    assert (scores2["processes"], scores2["devices_per_process"], scores1["processes"]) == (2, 4, 1)
    assert scores2["accuracy"] == scores1["accuracy"]
