"""`python -m vlm_jax.evaluate score` on hostile input: every case ends with the expected exit code (2 usage,
1 bad input, 0 when the input is valid but odd) and, on error, ONE stderr line naming the file / record / field;
never a traceback, never a silent wrong score."""
import json
import os

import pytest
from eval_shared_data import shared_data_dir

from vlm_jax.evaluate.__main__ import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATHVISTA = json.loads((shared_data_dir() / "mathvista_test_mini.json").read_text())


def _okvqa(tmp_path, questions=None, annotations=None):
    q = questions if questions is not None else {"data_subtype": "val2014", "questions": [
        {"image_id": 1, "question": "What?", "question_id": 11}]}
    a = annotations if annotations is not None else {"annotations": [
        {"question_id": 11, "question_type": "what", "answer_type": "other",
         "answers": [{"answer": "dog", "answer_id": i} for i in range(10)]}]}
    (tmp_path / "q.json").write_text(json.dumps(q) if not isinstance(q, bytes) else q.decode("latin-1"))
    (tmp_path / "a.json").write_text(json.dumps(a))
    return ["--config", f"{REPO}/configs/eval/okvqa.py", f"--config.eval_split.questions_path={tmp_path / 'q.json'}",
            f"--config.eval_split.annotations_path={tmp_path / 'a.json'}"]


def _preds(tmp_path, records, raw=None):
    path = tmp_path / "p.jsonl"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return ["--predictions", str(path)]


def _mathvista(tmp_path, pids):
    path = tmp_path / "mv.json"
    path.write_text(json.dumps([r for r in MATHVISTA if r["pid"] in pids]))
    return ["--config", f"{REPO}/configs/eval/mathvista.py", f"--config.eval_split.path={path}"]


def run(capsys, argv):
    code = main(["score", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err, *needles):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_annotation_with_no_answers(tmp_path, capsys):
    bad = {"annotations": [{"question_id": 11, "answers": []}]}
    code, _, err = run(capsys, _okvqa(tmp_path, annotations=bad) + _preds(tmp_path, [{"question_id": 11, "answer": "x"}]))
    assert code == 1
    one_line_error(err, "a.json question_id 11", "'answers'", "empty")


def test_questions_field_not_a_list(tmp_path, capsys):
    code, _, err = run(capsys, _okvqa(tmp_path, questions={"questions": 5}) + _preds(tmp_path, []))
    assert code == 1
    one_line_error(err, "q.json", "'questions' must be a list")


@pytest.mark.parametrize("generation", ["9" * 400, "1e999", "The answer is 10^400", "-" + "9" * 500 + ".5"])
def test_huge_number_for_an_integer_question_is_wrong_not_a_crash(tmp_path, capsys, generation):
    pid = next(r["pid"] for r in MATHVISTA if r["answer_type"] == "integer")
    code, out, err = run(capsys, _mathvista(tmp_path, {pid}) + _preds(tmp_path, [{"question_id": pid,
                                                                                  "answer": generation}]))
    assert code == 0, err
    assert json.loads(out)["accuracy"] == 0.0


def test_huge_number_for_a_float_question(tmp_path, capsys):
    pid = next(r["pid"] for r in MATHVISTA if r["answer_type"] == "float")
    code, out, err = run(capsys, _mathvista(tmp_path, {pid}) + _preds(tmp_path, [{"question_id": pid,
                                                                                  "answer": "1" * 400 + ".25"}]))
    assert code == 0 and json.loads(out)["accuracy"] == 0.0


@pytest.mark.parametrize("raw, needle", [
    (b'{"question_id": 11, "answer": "\xff\xfe"}\n', "not valid UTF-8"),
    (b"[" * 100000 + b"]" * 100000 + b"\n", "nested too deeply"),
    (b'{"question_id": {"a": 1}, "answer": "x"}\n', "'question_id' must be a string or integer"),
    (b'{"question_id": 11, "answer": 5}\n', "'answer' must be a string"),
    (b'{"question_id": 11, "answer": "x"}\n{"question_id": 11, "answer": "y"}\n', "appears more than once"),
    (b'{"question_id": 11, "answer": "x"\n', "p.jsonl:1: not valid JSON"),
    (b'[1, 2]\n', "p.jsonl record #0: missing field 'question_id'"),
])
def test_bad_prediction_files(tmp_path, capsys, raw, needle):
    code, _, err = run(capsys, _okvqa(tmp_path) + _preds(tmp_path, None, raw=raw))
    assert code == 1
    one_line_error(err, needle)


def test_bad_benchmark_files(tmp_path, capsys):
    preds = _preds(tmp_path, [{"question_id": 11, "answer": "x"}])
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    code, _, err = run(capsys, _okvqa(tmp_path) + preds + [f"--config.eval_split.questions_path={tmp_path / 'deep.json'}"])
    assert code == 1
    one_line_error(err, "deep.json", "nested too deeply")
    code, _, err = run(capsys, _okvqa(tmp_path) + preds + [f"--config.eval_split.annotations_path={tmp_path / 'no.json'}"])
    assert code == 1
    one_line_error(err, "no.json", "not found")
    code, _, err = run(capsys, _okvqa(tmp_path) + ["--predictions", str(tmp_path)])
    assert code == 1
    one_line_error(err, str(tmp_path))
    bad = [dict(r, precision="two") for r in MATHVISTA if r["answer_type"] == "float"][:1]
    (tmp_path / "mv.json").write_text(json.dumps(bad))
    code, _, err = run(capsys, ["--config", f"{REPO}/configs/eval/mathvista.py",
                                f"--config.eval_split.path={tmp_path / 'mv.json'}"] + preds)
    assert code == 1
    one_line_error(err, f"pid {bad[0]['pid']}", "'precision'")


@pytest.mark.parametrize("argv, needle", [
    ([], "--config is required"),
    (["--config", f"{REPO}/configs/eval/okvqa.py"], "--predictions is required"),
    (["--config", f"{REPO}/configs/eval/okvqa.py", "--predictions", "p", "--config.shotz=2"],
     "did you mean --config.shots?"),
    (["--config", f"{REPO}/configs/eval/okvqa.py", "--predictions", "p", "--config.protocol=paper"],
     "config.protocol='paper'"),
    (["--config", f"{REPO}/configs/eval/okvqa.py", "--predictions", "p", "--config.scorer=gpt"], "config.scorer"),
    (["--config", f"{REPO}/configs/eval/okvqa.py", "--predictions", "p", "--bogus"], "unknown flag --bogus"),
])
def test_usage_errors(capsys, argv, needle):
    code, _, err = run(capsys, argv)
    assert code == 2
    one_line_error(err, needle)


@pytest.mark.parametrize("extra, code, needle", [
    (["--ckpt", "/nonexistent"], 1, "/nonexistent/config.json"),
    (["--ckpt", "ftp://host/ckpt"], 2, "--ckpt ftp://host/ckpt: unsupported URL scheme ftp://"),
    (["--ckpt", __file__], 1, "not a vlm_jax params checkpoint"),
    (["--ckpt", "/tmp", "--config.shots=-1"], 2, "config.shots=-1"),
    (["--ckpt", "/tmp", "--config.shots=abc"], 2, "--config.shots=abc"),
    (["--ckpt", "/tmp", "--config.demo_selection=best"], 2, "config.demo_selection='best'"),
    (["--ckpt", "/tmp", "--config.rices.encoder=siglip"], 2, "config.rices.encoder='siglip'"),
    (["--ckpt", "/tmp", "--config.benchmark=vqav2"], 2, "config.benchmark='vqav2'"),
    ([], 2, "--ckpt is required"),
])
def test_run_form_errors(capsys, extra, code, needle):
    assert main(["--config", f"{REPO}/configs/eval/okvqa.py", *extra]) == code
    one_line_error(capsys.readouterr().err, needle)


def test_images_that_are_not_regular_files_or_too_large(tmp_path):
    """A named pipe is refused without blocking, a 1x60000 image before any canvas is built: errors naming
    the file (the limits of vlm_jax.data.image)."""
    from PIL import Image

    from vlm_jax.evaluate.examples import BenchmarkFileError
    from vlm_jax.evaluate.pixels import load_pixels

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(BenchmarkFileError, match="pipe.png.*not a regular file"):
        load_pixels([str(fifo)], {"image_size": 28})
    Image.new("RGB", (1, 60000)).save(tmp_path / "tall.png")
    with pytest.raises(BenchmarkFileError, match="tall.png.*aspect ratio"):
        load_pixels([str(tmp_path / "tall.png")], {"image_size": 28})
    with pytest.raises(BenchmarkFileError, match="nope.png"):
        load_pixels([str(tmp_path / "nope.png")], {"image_size": 28})
