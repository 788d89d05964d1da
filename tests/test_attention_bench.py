"""benchmarks/attention_bench.py runs end to end on CPU (`--cpu-smoke`: tiny sizes, Pallas interpret
mode) and prints its table, so the GPU benchmark cannot rot unnoticed. No timings are asserted."""
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "attention_bench.py"


def test_cpu_smoke_prints_a_row_per_implementation(capsys):
    spec = importlib.util.spec_from_file_location("attention_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--cpu-smoke", "--seqs", "48", "--kv-heads", "1", "--block-q", "16", "--block-k", "16"])
    rows = {line.split()[1]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.split() and line.split()[0] == "48"}
    assert set(rows) == {"xla", "cudnn", "jax-pallas-gpu*", "jax-pallas-tpu*", "ours"}
    for name in ("xla", "ours"):  # measured: fwd ms, TFLOP/s, ratio, fwd+bwd ms, TFLOP/s, ratio
        assert float(rows[name][2]) > 0 and float(rows[name][5]) > 0 and rows[name][4].endswith("x"), rows[name]
    assert rows["cudnn"][2] == "n/a"
