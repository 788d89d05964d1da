"""Locates the read-only `shared/` folder that sits beside the repository (`../shared` from the repo root in
CI; further up when the repository is a git worktree) by walking up from this file."""
import pathlib


def shared_data_dir() -> pathlib.Path:
    """`<ancestor>/shared/data` for the nearest ancestor of this file that has one."""
    for ancestor in pathlib.Path(__file__).resolve().parents:
        candidate = ancestor / "shared" / "data"
        if (candidate / "mathvista_test_mini.json").is_file():
            return candidate
    raise FileNotFoundError(f"no shared/data/mathvista_test_mini.json beside any ancestor of {__file__}")
