"""benchmarks/generate_dp_bench.py: its `jax.pmap` generation gives the same tokens as `generate` (jit of a
shard_map over a data mesh), including sampled tokens (global per-row keys), rows padded to the device count and rows
stopping at EOS on some devices only; the script prints one table row per method. No timings are asserted."""
import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

from vlm_jax.models.init import random_params
from vlm_jax.inference.generation import generate, local_data_mesh
from vlm_jax.models.llava import Llava

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "generate_dp_bench.py"
TINY = ["--batch", "5", "--new-tokens", "3", "--text-len", "3", "--hidden", "64", "--layers", "1",
        "--image-size", "28", "--repeats", "1"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("generate_dp_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_main_prints_identical_tokens_and_a_row_per_method(bench, capsys):
    result = bench.main(TINY + ["--temperature", "2.0"])
    out = capsys.readouterr().out
    assert result["identical"] is True and "identical tokens: True" in out
    table = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in table[0]] == ["method", "devices", "batch", "new tokens", "seconds", "tokens/s",
                                             "speed vs pmap", "first call s"]
    rows = {cells[0].strip(): [c.strip() for c in cells] for cells in table[1:]}
    assert set(rows) == {"pmap", bench.OURS}
    for name, cells in rows.items():
        assert cells[1:4] == [str(jax.local_device_count()), "5", "15"], cells  # EOS off: 5 rows x 3 tokens
        assert float(cells[4]) > 0 and float(cells[5]) > 0 and cells[6].endswith("x"), cells
    assert rows["pmap"][6] == "1.00x"


def test_pmap_on_3_devices_matches_jit_mesh_with_sampling_and_eos(bench):
    """Same shapes as the main test, so `generate`'s program is reused from it (only the pmap compiles)."""
    args = bench._parser().parse_args(TINY)
    cfg = bench.small_config(args)
    model, params = Llava(cfg), random_params(cfg, seed=1)
    batch = bench.make_batch(cfg, 5, 3, np.random.default_rng(1))
    run = bench.make_pmap_generate(model, jax.local_devices()[:3], max_new_tokens=3)  # 5 rows on 3 devices

    def both(**kw):
        return (generate(model, params, *batch, max_new_tokens=3, mesh=local_data_mesh(), **kw),
                run(params, *batch, **kw))

    ref, got = both(eos_token_id=-1, temperature=2.0, seed=3)
    np.testing.assert_array_equal(got.tokens, ref.tokens)
    eos = int(ref.tokens[4, 1])  # row 4 (alone on the last device) stops after at most 2 tokens
    ref, got = both(eos_token_id=eos, temperature=2.0, seed=3)
    assert ref.rows() == got.rows() and ref.num_tokens[4] <= 2
    np.testing.assert_array_equal(got.num_tokens, ref.num_tokens)
