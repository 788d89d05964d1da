"""The shared error boundary (vlm_jax.cli): exit codes, one `error:` line, traceback only on request."""
import pytest

from vlm_jax import cli


def _fails(exc):
    def main(argv):
        raise exc
    return main


@pytest.mark.parametrize("exc, code, message", [
    (cli.UsageError("--x must be >= 1, got 0"), 2, "error: --x must be >= 1, got 0"),
    (cli.InputError("data.json record 3: field 'texts' is missing;\n add it"), 1,
     "error: data.json record 3: field 'texts' is missing; add it"),
    (FileNotFoundError(2, "No such file or directory", "/nope/a.png"), 1, "error: /nope/a.png: no such file or folder"),
    (IsADirectoryError(21, "Is a directory", "/tmp"), 1, "error: /tmp: is a folder, expected a file"),
    (KeyboardInterrupt(), 130, "error: interrupted"),
    (TypeError("boom"), 1, "error: internal error in prog: TypeError: boom (rerun with --debug"),
])
def test_run_reports_one_line(exc, code, message, capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.run(_fails(exc), [], prog="prog") == code
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


def test_debug_flag_and_env_show_the_traceback(capsys, monkeypatch):
    seen = []
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.run(lambda argv: seen.append(argv) or (_ for _ in ()).throw(cli.InputError("bad")), ["a", "--debug"],
                   prog="p") == 1
    assert seen == [["a"]]  # --debug is taken out of argv
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("error: bad")
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    assert cli.run(_fails(cli.UsageError("u")), [], prog="p") == 2
    assert "Traceback" in capsys.readouterr().err


def test_success_and_argparse_errors(capsys):
    assert cli.run(lambda argv: None, [], prog="p") == 0
    assert cli.run(lambda argv: 3, [], prog="p") == 3

    def main(argv):
        parser = cli.ArgumentParser(prog="p")
        parser.add_argument("--n", type=int, required=True)
        parser.parse_args(argv)

    assert cli.run(main, ["--n", "x"], prog="p") == 2
    assert capsys.readouterr().err == "error: argument --n: invalid int value: 'x' (see p --help)\n"
    assert cli.run(main, [], prog="p") == 2
    assert "the following arguments are required: --n" in capsys.readouterr().err


def test_closest():
    assert cli.closest("workdri", ["workdir", "config"]) == "workdir"
    assert cli.closest("zzz", ["workdir", "config"]) is None
