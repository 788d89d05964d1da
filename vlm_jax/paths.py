"""Local paths and remote URLs: the one place that decides which a path is and how to read, write, append to
and list it.

A path is remote when it is a URL of a supported scheme (`gs://bucket/run`, `s3://bucket/run`); anything else
is a path of this machine (made absolute by `resolve`). Remote paths go through `etils.epath` (fsspec: gcsfs
for gs://, s3fs for s3://; install `vlm_jax[gcs]` for gs://); Orbax writes and reads checkpoint arrays there
with TensorStore's own gcs / s3 drivers. What goes remote: a training run's workdir (metrics, TensorBoard,
run config, summary, checkpoints with their data-stream state, final params, profile), params checkpoints read
as `init_checkpoint` / `--ckpt`, and evaluation outputs (predictions, scores). What stays local
(`require_local`): inputs read by libraries that open files themselves, above all the ArrayRecord shards
(random access through a C++ reader; Grain's advice for buckets is a gcsfuse mount).

Object stores have no append: `Appender` keeps a remote file's content and rewrites the object on each write
(metrics and prediction files are small); an object write is atomic, so no temporary file + rename is needed.

Tested offline against a local GCS emulator (`tests/test_remote_paths.py`): gcsfs reads `STORAGE_EMULATOR_HOST`,
TensorStore `TENSORSTORE_GCS_HTTP_URL`.

    paths.resolve("run")                     # '/abs/cwd/run'
    paths.join("gs://b/run", "metrics.jsonl")  # 'gs://b/run/metrics.jsonl'
    paths.write_text(paths.join(workdir, "summary.json"), text)
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from typing import Iterable

from etils import epath

from vlm_jax import cli

# URL scheme -> the fsspec package epath needs for it. gs:// is tested (emulator); s3:// takes the same code
# path (s3fs, TensorStore's s3 driver) but is not tested here.
REMOTE_SCHEMES = {"gs": "gcsfs", "s3": "s3fs"}
GCSFUSE_HINT = ("mount the bucket with gcsfuse (gcsfuse --implicit-dirs BUCKET /gcs/BUCKET) and give the "
                "mounted path /gcs/BUCKET/...")


def scheme(path) -> str | None:
    """The URL scheme of `path` ('gs' for gs://b/x), None for a local path."""
    path = os.fspath(path)
    head, sep, _ = path.partition("://")
    return head.lower() if sep and head.isalnum() else None


def is_remote(path) -> bool:
    """Whether `path` is a URL (`gs://...`, `s3://...`, or any other scheme, which `check` refuses)."""
    return bool(path) and scheme(path) is not None


def check(path, what: str) -> None:
    """`cli.UsageError` naming `what` when `path` is a URL this install cannot use: an unknown scheme, or a
    known one whose fsspec package is missing. Local paths pass."""
    s = scheme(path) if path else None
    if s is None:
        return
    if s not in REMOTE_SCHEMES:
        raise cli.UsageError(f"{what} {path}: unsupported URL scheme {s}://; give a local path or a "
                             f"{' / '.join(f'{k}://' for k in REMOTE_SCHEMES)} URL")
    package = REMOTE_SCHEMES[s]
    if importlib.util.find_spec(package) is None:
        extra = " (pip install 'vlm_jax[gcs]')" if s == "gs" else f" (pip install {package})"
        raise cli.UsageError(f"{what} {path}: {s}:// paths need the {package} package{extra}")


def require_local(path, what: str, why: str) -> None:
    """`cli.UsageError` naming `what` when `path` is a URL: an input only a local path (or a mounted bucket)
    can give; `why` says which reader needs it."""
    if is_remote(path):
        raise cli.UsageError(f"{what} {path}: must be a local path ({why}); {GCSFUSE_HINT}")


def resolve(path) -> str:
    """An absolute local path, or the URL unchanged (trailing '/' removed)."""
    path = os.fspath(path)
    return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def join(base, *parts: str) -> str:
    """`base/part/...` for a local path or a URL."""
    base = os.fspath(base)
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def as_path(path) -> epath.Path:
    """An `epath.Path` (pathlib-like, local or remote) of a resolved `path`."""
    return epath.Path(resolve(path))


def exists(path) -> bool:
    return as_path(path).exists()


def isfile(path) -> bool:
    return as_path(path).is_file()


def isdir(path) -> bool:
    return as_path(path).is_dir()


def makedirs(path) -> None:
    """Creates the folder and its parents (a no-op for object stores, which have no folders)."""
    if is_remote(path):
        return
    os.makedirs(path, exist_ok=True)


def read_text(path) -> str:
    return as_path(path).read_text(encoding="utf-8")


def write_text(path, text: str) -> None:
    """Writes `text` whole, atomically (see `write_bytes`)."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path, data: bytes) -> None:
    """Writes `data` whole: locally through a temporary file and a rename (creating the folder), remotely as
    one object upload; both atomic: a reader never sees half a file."""
    if is_remote(path):
        as_path(path).write_bytes(data)
        return
    path = os.fspath(path)
    makedirs(os.path.dirname(os.path.abspath(path)))
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def copy_file(src, dst) -> None:
    """Copies one file; either side may be remote."""
    if not is_remote(src) and not is_remote(dst):
        shutil.copyfile(src, dst)
        return
    as_path(dst).write_bytes(as_path(src).read_bytes())


def upload_tree(local_dir: str, dst) -> None:
    """Copies every file under the local folder `local_dir` to the same relative path under `dst`."""
    for root, _, files in os.walk(local_dir):
        for name in files:
            src = os.path.join(root, name)
            copy_file(src, join(dst, os.path.relpath(src, local_dir).replace(os.sep, "/")))


def local_copy(directory, names: Iterable[str]) -> str:
    """A local folder holding those of `names` that the (possibly remote) `directory` has: `directory` itself
    when it is local, else one folder per URL under the system's temporary folder
    (`vlm_jax_remote/<hash of the URL>`), refreshed on each call: every file is downloaded again and written
    atomically, and a file the URL no longer has is removed, so repeated reads of one checkpoint neither leave a
    folder each behind nor see a stale file (tokenizer and image settings of a remote checkpoint, for readers
    that open local files)."""
    if not is_remote(directory):
        return os.fspath(directory)
    url = resolve(directory)
    local = os.path.join(tempfile.gettempdir(), "vlm_jax_remote", hashlib.sha256(url.encode()).hexdigest()[:16])
    for name in names:
        src, dst = as_path(join(url, name)), os.path.join(local, name)
        if src.is_file():
            write_bytes(dst, src.read_bytes())
        elif os.path.exists(dst):
            os.remove(dst)
    makedirs(local)
    return local


class Appender:
    """Appends text to a file, each `write` durable when it returns: locally `open(path, "a")` with flush +
    fsync; remotely the file's content is kept and the object rewritten (object stores have no append)."""

    def __init__(self, path):
        self.path = resolve(path)
        self._remote = is_remote(self.path)
        if self._remote:
            p = as_path(self.path)
            self._content = p.read_text(encoding="utf-8") if p.exists() else ""
            self._file = None
        else:
            self._file = open(self.path, "a", encoding="utf-8")

    def write(self, text: str) -> None:
        if self._remote:
            self._content += text
            as_path(self.path).write_text(self._content, encoding="utf-8")
            return
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
