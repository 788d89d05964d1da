"""Compiling for accelerators this machine does not have: the train step and the generation program for
TPU slices (libtpu's compile-only devices, `vlm_jax.training.aot`), and the flash kernel's forward and
backward for TPU (Mosaic) and for CUDA (Triton, lowered through `jax.export`)."""
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.kernels.flash_attention import flash_attention
from vlm_jax.topology import compile_only_devices, parse_slice
from vlm_jax.training import aot
from vlm_jax.training.config import base_config, model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu is not installed (pip install -e '.[tpu]')")


def test_parse_slice_names():
    assert parse_slice("v5p-8").topology_name == "v5p:2x2x1" and parse_slice("v5p-8").chips == 4
    assert parse_slice("v4-32").topology_name == "v4:2x2x4" and parse_slice("v4-32").chips == 16
    assert parse_slice("v5e-32").topology_name == "v5e:4x8" and parse_slice("v5litepod-16").chips == 16
    assert parse_slice("v6e-8").topology_name == "v6e:2x4" and parse_slice("v6e-8").hbm_gib == 31.25
    assert parse_slice("V5P:2x2x2").chips == 8
    two = parse_slice("2xv5e-16")
    assert (two.num_slices, two.chips, two.accelerator_type) == (2, 32, "v5litepod-16")
    for bad in ("v5p-6", "v9-8", "v5e:2x2x1", "tpu"):
        with pytest.raises(ValueError, match="TPU slice"):
            parse_slice(bad)


def _tiny_train_config(**changes):
    c = base_config()
    c.attention_impl, c.dtype, c.remat_policy = "pallas", "bfloat16", "full"
    c.global_batch_size, c.data.seq_len, c.data.max_images_per_row = 4, 256, 2
    for key, value in changes.items():
        c[key] = value
    return c


def test_fit_advice_does_not_ask_an_offloaded_step_for_full_remat():
    figures = {"per_chip_gib": 31.0, "arguments_gib": 12.9, "temporaries_gib": 18.1}
    v4 = parse_slice("v4-8")
    offload = aot.fit_verdict(figures, v4, rows_per_chip=1, remat_policy="offload", attention_impl="pallas")
    none = aot.fit_verdict(figures, v4, rows_per_chip=1, remat_policy="none", attention_impl="pallas")
    assert offload.startswith("needs 31.0 GiB per chip") and "remat_policy=full" not in offload
    assert "remat_policy=full" in none
    assert aot.fit_verdict({**figures, "per_chip_gib": 30.0}, v4, rows_per_chip=1, remat_policy="none",
                           attention_impl="xla") == ""


@needs_libtpu
def test_tiny_llava_train_step_compiles_for_tpu_with_the_mosaic_kernel():
    c = _tiny_train_config()
    report = aot.compile_train_step(c, model_config(c), parse_slice("v5e:2x2"))
    assert report["fits"] and report["chips"] == 4 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert report["rows_per_chip"] == 1 and report["tokens_per_step"] == 4 * 256
    assert 0 < report["arguments_gib"] < report["per_chip_gib"] < 1
    assert report["model_tflops_per_step"] > 0
    assert report["mosaic_calls"] >= 3  # the flash kernel's forward, dq and dk/dv, through Mosaic
    assert set(aot.REPORT_KEYS) <= set(report)


@needs_libtpu
def test_offloaded_layer_inputs_count_as_host_memory_not_hbm():
    """`remat_policy="offload"`: XLA:TPU's `temp_size_in_bytes` includes the host-memory copies of the layers'
    saved inputs; the report moves exactly those bytes (layers x rows per chip x seq x hidden, bf16) to
    host_gib and counts only HBM in per_chip_gib."""
    c = _tiny_train_config(remat_policy="offload")
    report = aot.compile_train_step(c, model_config(c), parse_slice("v5e:2x2"))
    mc = model_config(c).text_config
    saved = mc.num_hidden_layers * 1 * 256 * mc.hidden_size * 2 / aot.GIB
    assert report["host_gib"] == pytest.approx(saved, rel=1e-6)
    hbm_sum = (report["arguments_gib"] + report["outputs_gib"] - report["aliased_gib"] + report["temporaries_gib"]
               + report["code_gib"])
    assert report["per_chip_gib"] == pytest.approx(max(hbm_sum, report["peak_gib"]))


@needs_libtpu
def test_tiny_idefics2_train_step_compiles_for_tpu_with_its_pixel_mask():
    """The Idefics2 family's step (its batch carries `pixel_attention_mask`; SigLIP, perceiver and the windowed
    Mistral through the Mosaic kernel) compiles for a TPU slice, as configs/idefics2_textbook_8b.py does."""
    import importlib.util as iu

    spec = iu.spec_from_file_location("idefics2_demo_cfg", os.path.join(ROOT, "configs", "idefics2_demo.py"))
    module = iu.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.attention_impl, c.dtype, c.remat_policy, c.global_batch_size, c.data.max_images_per_row = (
        "pallas", "bfloat16", "full", 4, 2)
    batch = aot.abstract_batch(c, model_config(c), sharding=None)
    assert batch["pixel_attention_mask"].shape == (4, 2, 32, 32) and batch["pixel_values"].shape == (4, 2, 32, 32, 3)
    report = aot.compile_train_step(c, model_config(c), parse_slice("v5e:2x2"))
    assert report["fits"] and report["rows_per_chip"] == 1 and report["model_tflops_per_step"] > 0
    assert report["mosaic_calls"] >= 3


@needs_libtpu
def test_multislice_mesh_puts_slices_on_the_data_axis():
    from vlm_jax.sharding import make_mesh

    mesh = make_mesh(data=2, fsdp=-1, tensor=1, devices=compile_only_devices(parse_slice("2xv5e:2x2")))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert (slices[0] == 0).all() and (slices[1] == 1).all()  # only `data` crosses slices (DCN)


@needs_libtpu
def test_generation_program_compiles_for_tpu():
    c = base_config()
    mc = model_config(c)
    report = aot.compile_generation(mc, parse_slice("v5e-4"), batch_size=6, prompt_len=40,
                                    max_images=2, max_new_tokens=8)
    assert report["fits"] and report["rows_per_chip"] == 2 and report["prompt_len"] >= 40
    assert report["per_chip_gib"] > 0


@needs_libtpu
def test_compile_topology_cli_exit_codes_and_json_last_line():
    """Exit 1 with a one-line reason when the step does not fit (XLA attention materialises the
    [batch, heads, 64k, 64k] scores: far beyond a v5e chip's 16 GiB), JSON object on the last line."""
    cmd = [sys.executable, "-m", "vlm_jax.train", "--config", os.path.join(ROOT, "configs", "demo.py"),
           "--compile_topology", "v5e-4", "--config.attention_impl=xla", "--config.data.seq_len=65536",
           "--config.global_batch_size=4", "--config.model_overrides.text_config.max_position_embeddings=65536"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(last) == set(aot.REPORT_KEYS) and last["fits"] is False and last["per_chip_gib"] > 16
    reasons = [line for line in out.stderr.splitlines() if line.startswith("does not fit")]
    assert len(reasons) == 1 and "fewer rows per chip" in reasons[0]


def _kernel_loss(causal, with_segments):
    def loss(q, k, v, seg):
        segs = (seg, seg) if with_segments else (None, None)
        out = flash_attention(q, k, v, *segs, causal=causal, backend=loss.backend, interpret=False)
        return jnp.sum(out.astype(jnp.float32) ** 2)

    return loss


# (head_dim, causal, segment ids): every value of each, GQA (8 query heads over 2 kv heads) throughout.
KERNEL_CASES = [(64, True, True), (128, False, True), (128, True, False), (64, False, False)]


def _kernel_args(head_dim, dtype=jnp.bfloat16):
    b, s, h, kv = 2, 512, 8, 2
    return (jax.ShapeDtypeStruct((b, s, h, head_dim), dtype), jax.ShapeDtypeStruct((b, s, kv, head_dim), dtype),
            jax.ShapeDtypeStruct((b, s, kv, head_dim), dtype), jax.ShapeDtypeStruct((b, s), jnp.int32))


@needs_libtpu
@pytest.mark.parametrize("head_dim,causal,with_segments", KERNEL_CASES)
def test_flash_kernel_forward_and_backward_compile_for_tpu(head_dim, causal, with_segments):
    device = compile_only_devices(parse_slice("v5e:2x2"))[0]
    loss = _kernel_loss(causal, with_segments)
    loss.backend = "tpu"
    sharding = jax.sharding.SingleDeviceSharding(device)
    args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in _kernel_args(head_dim)]
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
    text = compiled.as_text()
    assert text.count('custom_call_target="tpu_custom_call"') >= 3  # forward, dq, dk/dv Mosaic kernels


@pytest.mark.parametrize("head_dim,causal,with_segments", KERNEL_CASES)
def test_flash_kernel_forward_and_backward_lower_for_cuda(head_dim, causal, with_segments):
    loss = _kernel_loss(causal, with_segments)
    loss.backend = "gpu"
    exported = jax.export.export(
        jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))), platforms=("cuda",),
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(*_kernel_args(head_dim))
    text = exported.mlir_module()
    assert exported.platforms == ("cuda",)
    for name in ("vlm_flash_fwd", "vlm_flash_dq", "vlm_flash_dkv"):
        assert name in text, name
