"""Python config files (`get_config()` returning an ml_collections ConfigDict) and their `--config.x=v`
overrides, with one-line errors (`vlm_jax.cli.InputError` / `UsageError`) that name the file, line or key.

    config = load("configs/demo.py")                      # or "configs/x.py:ARG" -> get_config("ARG")
    check_override_keys(config, ["--config.optim.lr=1"])  # UsageError naming optim's fields
    values = parse_flags("python -m vlm_jax.train", argv, define=lambda v: flags.DEFINE_string(..., flag_values=v))
"""
from __future__ import annotations

import importlib.util
import os
import re
from typing import Any, Callable, Iterable

from vlm_jax import cli


def split_spec(spec: str) -> tuple[str, str | None]:
    """"path.py:arg" -> ("path.py", "arg"); a plain path -> (path, None)."""
    path, sep, arg = spec.rpartition(":")
    if sep and path.endswith(".py") and not os.path.exists(spec):
        return path, arg
    return spec, None


def load(spec: str, *, what: str = "--config") -> Any:
    """Runs `get_config()` (or `get_config(arg)` for "path:arg") of the Python file `spec`."""
    path, arg = split_spec(spec)
    cli.require_file(path, what, "give a Python config file such as configs/demo.py")
    if not path.endswith(".py"):
        raise cli.InputError(f"{what} {path}: not a .py config file; give a Python file defining get_config()")
    name = "vlm_jax_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise cli.InputError(f"{what} {path} line {e.lineno}: syntax error ({e.msg})") from e
    except Exception as e:  # an import or statement at module level failed
        raise cli.InputError(f"{what} {path}: loading it failed ({type(e).__name__}: {cli.one_line(e)})") from e
    if not callable(getattr(module, "get_config", None)):
        raise cli.InputError(f"{what} {path}: defines no get_config(); a config file returns its ConfigDict "
                             "from get_config()")
    try:
        return module.get_config() if arg is None else module.get_config(arg)
    except Exception as e:
        raise cli.InputError(f"{what} {spec}: get_config() failed ({type(e).__name__}: {cli.one_line(e)})") from e


def leaf_paths(config: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every field of a (nested) ConfigDict / dict, sub-dicts included."""
    out = []
    items = config.items() if hasattr(config, "items") else []
    for key, value in items:
        path = f"{prefix}{key}"
        out.append(path)
        if hasattr(value, "items"):
            out.extend(leaf_paths(value, path + "."))
    return out


def override_keys(argv: Iterable[str], name: str = "config") -> list[str]:
    """The dotted keys of the `--NAME.key=value` / `--NAME.key value` overrides in `argv`."""
    keys = []
    for arg in argv:
        m = re.match(rf"^--?{re.escape(name)}\.([^=]+)", arg)
        if m:
            keys.append(m.group(1))
    return keys


def check_override_keys(config: Any, argv: Iterable[str], name: str = "config") -> None:
    """`UsageError` for the first `--NAME.key` override naming a field `config` does not have, with the
    closest valid key (difflib over the dotted paths, then over the last component)."""
    paths = leaf_paths(config)
    known = set(paths)
    for key in override_keys(argv, name):
        if key in known:
            continue
        parent = key.rpartition(".")[0]
        if parent and parent in known and not hasattr(_get(config, parent), "items"):
            raise cli.UsageError(f"--{name}.{key}: {parent!r} is a value, not a group of fields")
        last = key.rpartition(".")[2]
        hint = None
        if parent in known or not parent:  # a sibling first: optim.learnig_rate -> optim.learning_rate
            siblings = [p for p in paths if p.rpartition(".")[0] == parent]
            match = cli.closest(last, [p.rpartition(".")[2] for p in siblings])
            hint = f"{parent}.{match}" if match and parent else match
        if hint is None:  # then anywhere: seq_len -> data.seq_len
            by_last = {p.rpartition(".")[2]: p for p in paths if not key.startswith(p + ".")}
            match = cli.closest(last, by_last)
            hint = by_last[match] if match else None
        if hint:
            suggestion = f"; did you mean --{name}.{hint}?"
        elif parent in known:
            suggestion = f"; {parent!r} has the fields {', '.join(sorted(_get(config, parent)))}"
        else:
            suggestion = f"; top-level fields: {', '.join(sorted(config))}"
        raise cli.UsageError(f"--{name}.{key}: the config has no field {key!r}{suggestion}")


def _get(config: Any, path: str) -> Any:
    for part in path.split("."):
        config = config[part]
    return config


def parse_flags(prog: str, argv: list[str], *, define: Callable[[Any], None] | None = None,
                config_help: str = "config file (configs/NAME.py)", example: str = "configs/demo.py"):
    """Parses `--config FILE [--config.key=value ...]` plus the flags `define(flag_values)` adds into a fresh
    absl FlagValues (nothing global, so it can run many times in one process) and returns it; `.config` is
    the loaded ConfigDict with the overrides applied. Every failure is a one-line `UsageError`/`InputError`."""
    from absl import flags
    from ml_collections import config_flags

    spec = _flag_value(argv, "config")
    if spec is None:
        raise cli.UsageError(f"--config is required (e.g. {prog} --config {example})")
    check_override_keys(load(spec), argv)
    values = flags.FlagValues()
    full = [prog] + list(argv)
    config_flags.DEFINE_config_file("config", None, config_help, flag_values=values, sys_argv=full, lock_config=True)
    if define is not None:
        define(values)
    try:
        rest = values(full)
    except flags.UnrecognizedFlagError as e:
        raise cli.UsageError(f"unknown flag --{e.flagname}{cli.did_you_mean(e.flagname, list(values))} "
                             f"(see {prog} --help)") from None
    except flags.Error as e:
        raise cli.UsageError(cli.one_line(e)) from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # ml_collections cannot apply an override
        raise cli.UsageError(f"a --config.* override cannot be applied ({cli.one_line(e)})") from None
    if len(rest) > 1:
        raise cli.UsageError(f"unexpected arguments {rest[1:]}; settings are flags (--config.key=value)")
    return values


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of `--name V` / `--name=V` in argv (None when absent)."""
    for i, arg in enumerate(argv):
        if arg in (f"--{name}", f"-{name}"):
            return argv[i + 1] if i + 1 < len(argv) else None
        for prefix in (f"--{name}=", f"-{name}="):
            if arg.startswith(prefix):
                return arg[len(prefix):]
    return None
