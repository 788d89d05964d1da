"""The memory techniques change no result: chunked LM head + cross-entropy (per-token and the training
loss that skips positions without loss), the chunked MLP and the "offload" remat policy give the plain
step's loss and gradients (fp32, 8 simulated devices, fsdp x data)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train_testlib import initial_state, packed_batches, tiny_config, write_corpus
from vlm_jax.models.llava import Llava
from vlm_jax.sharding import DEFAULT_RULES, batch_sharding, make_mesh
from vlm_jax.training.loss import token_cross_entropy, weighted_cross_entropy
from vlm_jax.training.optimizer import make_optimizer, make_schedule
from vlm_jax.training.step import MODEL_INPUTS, head_inputs, token_losses


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config, batch, params, the plain loss and gradients on 8 devices)."""
    config = tiny_config()
    batch = packed_batches(write_corpus(tmp_path_factory.mktemp("corpus")), config, 1)[0]
    params = initial_state(config).params
    want = loss_and_grads(lambda p, b: plain_loss(config, p, b), params, batch, make_mesh(2, 4, 1))
    return config, batch, params, want


def plain_loss(config, params, batch):
    """The reference: full `[b, s, vocab]` logits from the model, optax cross-entropy, global token mean."""
    logits, _ = Llava(config).apply({"params": params}, *(batch[k] for k in MODEL_INPUTS))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]) * batch["loss_mask"]
    return ce.sum() / batch["loss_mask"].sum()


def loss_and_grads(fn, params, batch, mesh):
    """jit(value_and_grad(fn)) on `mesh` (batch over data x fsdp, params replicated), results on host."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        batch = jax.device_put(batch, batch_sharding(mesh))
        return jax.device_get(jax.jit(jax.value_and_grad(fn))(params, batch))


def assert_same(got, want):
    np.testing.assert_allclose(got[0], want[0], rtol=2e-6)
    flat_got, flat_want = jax.tree.leaves(got[1]), jax.tree.leaves(want[1])
    assert len(flat_got) == len(flat_want)
    for g, w in zip(flat_got, flat_want):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-7)


def test_chunked_cross_entropy_equals_full_logits(setup):
    config, batch, params, want = setup
    model = Llava(config)
    # 24 does not divide the 64-token rows: the last chunk is padded
    got = loss_and_grads(lambda p, b: token_losses(model, p, b, 24).sum() / b["loss_mask"].sum(),
                         params, batch, make_mesh(2, 4, 1))
    assert_same(got, want)


def test_cross_entropy_chunks_pad_to_zero():
    hidden = jax.random.normal(jax.random.key(0), (2, 7, 4))
    kernel = jax.random.normal(jax.random.key(1), (4, 11))
    targets = jnp.arange(14).reshape(2, 7) % 11
    mask = jnp.ones((2, 7)).at[1, 3].set(0.0)
    full = token_cross_entropy(hidden, kernel, targets, mask, 0)
    assert full[1, 3] == 0 and full[0, 3] > 0
    np.testing.assert_allclose(token_cross_entropy(hidden, kernel, targets, mask, 3), full, rtol=1e-6)


@pytest.mark.parametrize("chunk,groups", [(0, 1), (16, 8), (24, 4)])
def test_weighted_cross_entropy_step_loss_equals_full_logits(setup, chunk, groups):
    """The train step's loss (`weighted_cross_entropy`, own gradient rule) on 8 devices: the plain loss and
    gradients, whole rows at once or in chunks of each shard's loss positions (24: a padded last chunk)."""
    config, batch, params, want = setup
    model = Llava(config)

    def loss(p, b):
        hidden, kernel = head_inputs(model, p, b)
        return weighted_cross_entropy(hidden, kernel, b["targets"], b["loss_mask"], chunk, groups) / b["loss_mask"].sum()

    assert_same(loss_and_grads(loss, params, batch, make_mesh(2, 4, 1)), want)


@pytest.mark.parametrize("chunk,groups", [(0, 1), (3, 1), (5, 2), (4, 3), (64, 2)])
def test_weighted_cross_entropy_equals_autodiff_of_token_losses(chunk, groups):
    """Value and gradients (hidden, kernel) against autodiff of `token_cross_entropy`, with weights that
    are not 0/1, a row and a whole group without loss, chunks that do not divide a group's positions."""
    b, s, d, vocab = 6, 9, 5, 13
    hidden = jax.random.normal(jax.random.key(0), (b, s, d))
    kernel = jax.random.normal(jax.random.key(1), (d, vocab))
    targets = jax.random.randint(jax.random.key(2), (b, s), 0, vocab)
    weights = jax.random.uniform(jax.random.key(3), (b, s)) * (jax.random.uniform(jax.random.key(4), (b, s)) < 0.6)
    weights = weights.at[0].set(0.0).at[4:].set(0.0)  # groups=3: rows 4-5 are a group with no loss
    want = jax.value_and_grad(lambda h, k: token_cross_entropy(h, k, targets, weights, 0).sum(), argnums=(0, 1))(
        hidden, kernel)
    got = jax.jit(jax.value_and_grad(lambda h, k: 2.0 * weighted_cross_entropy(h, k, targets, weights, chunk, groups),
                                     argnums=(0, 1)))(hidden, kernel)
    np.testing.assert_allclose(got[0], 2.0 * want[0], rtol=1e-6)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, 2.0 * w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weighted_cross_entropy(hidden, kernel, targets, weights, chunk, groups), want[0],
                               rtol=1e-6)  # undifferentiated: the per-token losses' sum


def test_weighted_cross_entropy_never_runs_the_head_on_positions_without_loss():
    """NaN hidden states where the weight is 0 (an image block): the plain head's gradient is NaN, the
    training loss's (which runs only the chunks of loss positions, 4 per row here = 2 whole chunks) is
    the gradient of the loss positions alone."""
    b, s, d, vocab = 2, 10, 4, 7
    hidden = jax.random.normal(jax.random.key(0), (b, s, d))
    kernel = jax.random.normal(jax.random.key(1), (d, vocab))
    targets = jax.random.randint(jax.random.key(2), (b, s), 0, vocab)
    weights = jnp.zeros((b, s)).at[:, 3:7].set(1.0)
    poisoned = jnp.where(weights[..., None] > 0, hidden, jnp.nan)
    grads = lambda f, h: jax.grad(f, argnums=(0, 1))(h, kernel)
    plain = grads(lambda h, k: token_cross_entropy(h, k, targets, weights, 0).sum(), poisoned)
    assert np.isnan(plain[1]).any()  # the plain head does read them
    got = grads(lambda h, k: weighted_cross_entropy(h, k, targets, weights, 4, 1), poisoned)
    want = grads(lambda h, k: token_cross_entropy(h[:, 3:7], k, targets[:, 3:7], weights[:, 3:7], 0).sum(), hidden)
    for g, w in zip(got, want):  # d/dhidden is 0 outside the loss positions
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_chunked_mlp_and_offloaded_remat_equal_plain_step(setup):
    config, batch, params, want = setup
    changed = config.with_runtime(remat_policy="offload", mlp_chunk=16)
    assert changed.text_config.mlp_chunk == 16 and changed.text_config.remat_policy == "offload"
    got = loss_and_grads(lambda p, b: plain_loss(changed, p, b), params, batch, make_mesh(2, 4, 1))
    assert_same(got, want)


def test_bfloat16_moments_store_half_and_update_in_float32():
    optim = {"learning_rate": 1e-2, "schedule": "constant", "warmup_steps": 0, "warmup_ratio": 0.0,
             "min_lr_ratio": 0.0, "weight_decay": 0.1, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "max_grad_norm": 1.0}
    params = {"w": jax.random.normal(jax.random.key(0), (8, 8)), "scale": jnp.ones((8,))}
    grads = [jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 1)) + 0.1, params) for i in range(3)]
    results = {}
    for dtype in ("float32", "bfloat16"):
        tx = make_optimizer({**optim, "moment_dtype": dtype}, make_schedule(optim, 10))
        state, updates = tx.init(params), []
        for g in grads:
            u, state = tx.update(g, state, params)
            updates.append(u)
        results[dtype] = (state, updates)
    moments = [x for x in jax.tree.leaves(results["bfloat16"][0]) if x.ndim]
    assert moments and all(x.dtype == jnp.bfloat16 for x in moments)
    f32, bf16 = results["float32"][1], results["bfloat16"][1]
    # the first update starts from zero moments: identical; later ones see rounded moments
    for a, b in zip(jax.tree.leaves(f32[0]), jax.tree.leaves(bf16[0])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(f32[2]), jax.tree.leaves(bf16[2])):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=1e-5)
        assert b.dtype == jnp.float32
    with pytest.raises(ValueError, match="moment_dtype"):
        make_optimizer({**optim, "moment_dtype": "float16"}, make_schedule(optim, 10))


def test_memory_ladder_adds_one_option_per_rung_and_auto_stops_at_the_first_fit():
    from vlm_jax.training import memory
    from vlm_jax.training.config import base_config

    c = base_config()
    c.global_batch_size, c.data.seq_len, c.memory = 16, 8192, "auto"
    names = [name for name, _ in memory.rungs(c, batch_shards=8)]
    assert names == ["as written", "grad_accum_steps=2", "remat_policy=offload", "mlp_chunk=4096",
                     "optim.moment_dtype=bfloat16"]  # float32 compute: compute_dtype_grads would change nothing
    last = memory.rungs(c, 8)[-1][1]
    assert (last.grad_accum_steps, last.remat_policy, last.mlp_chunk, last.optim.moment_dtype) == \
        (2, "offload", 4096, "bfloat16")
    c.dtype = "bfloat16"  # bf16 compute: compute_dtype_grads, with accumulation only after the other rungs
    assert [name for name, _ in memory.rungs(c, 8)] == [
        "as written", "grad_accum_steps=2", "remat_policy=offload", "mlp_chunk=4096", "compute_dtype_grads_accum",
        "optim.moment_dtype=bfloat16"]
    assert memory.rungs(c, 8)[-1][1].compute_dtype_grads and not memory.rungs(c, 8)[-3][1].compute_dtype_grads_accum
    names = [name for name, _ in memory.rungs(c, batch_shards=16)]
    assert names == ["as written", "compute_dtype_grads", "remat_policy=offload", "mlp_chunk=4096",
                     "optim.moment_dtype=bfloat16"]
    c.compute_dtype_grads = True  # already as written: no rung for it
    assert "compute_dtype_grads" not in [name for name, _ in memory.rungs(c, 16)]
    c.dtype, c.compute_dtype_grads = "float32", False
    c.loss_normalization = "per_device"  # accumulation would change the per-device groups: not offered
    assert "grad_accum_steps=2" not in [name for name, _ in memory.rungs(c, 8)]
    tried = []
    chosen, result, _ = memory.choose(c, 8, lambda cfg: tried.append(cfg.remat_policy) or cfg.remat_policy,
                                      lambda r: r == "offload")
    assert tried == ["none", "offload"] and chosen.remat_policy == "offload" and chosen.mlp_chunk == 0
    c.memory = "fixed"
    assert memory.choose(c, 8, lambda cfg: 1, lambda r: False)[0].remat_policy == "none"


def _step_gradients(config, batch, params, mesh, **step_options):
    """The float32 gradients a jitted train step hands its optimizer (params sharded by the rules on `mesh`,
    batch over data x fsdp): the optimizer here only stores them in its state."""
    from vlm_jax.training.state import TrainState, abstract_train_state
    from vlm_jax.training.step import jit_train_step, make_train_step

    keep = optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p),
                                        lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))
    schedule = optax.constant_schedule(0.0)
    _, shardings = abstract_train_state(config, ("vision_tower",), keep, mesh, DEFAULT_RULES)
    trained = {k: v for k, v in params.items() if k != "vision_tower"}
    state = TrainState(step=np.zeros((), np.int32), params=params, opt_state=keep.init(trained))
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        step = jit_train_step(make_train_step(Llava(config), keep, schedule, frozen=("vision_tower",), **step_options),
                              shardings, batch_sharding(mesh))
        state, metrics = step(jax.device_put(state, shardings), jax.device_put(batch, batch_sharding(mesh)))
        return jax.device_get((state.opt_state, metrics))


def test_compute_dtype_grads_equal_float32_grads(setup):
    """bf16 compute on float32 params: the decoder layers' gradients kept in bf16 until the update are the
    float32 step's gradients exactly (each is one bf16 value upcast)."""
    config, batch, params, _ = setup
    config = config.with_runtime(dtype="bfloat16")
    mesh = make_mesh(2, 4, 1)
    want, want_metrics = _step_gradients(config, batch, params, mesh)
    got, got_metrics = _step_gradients(config, batch, params, mesh, compute_dtype_grads=True)
    np.testing.assert_array_equal(got_metrics["loss"], want_metrics["loss"])
    flat_got, flat_want = jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)
    assert len(flat_got) == len(flat_want) and any("layers" in jax.tree_util.keystr(p) for p, _ in flat_got)
    for (path, g), w in zip(flat_got, flat_want):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, w, err_msg=jax.tree_util.keystr(path))
    # a bf16 gradient upcast: the layers' float32 gradients have no bits below bf16's
    layer_grads = jax.tree.leaves(got["language_model"]["layers"])
    assert all(np.array_equal(g, g.astype(jnp.bfloat16).astype(np.float32)) for g in layer_grads)


def test_compute_dtype_grads_with_chunked_mlp_round_the_chunk_sum_once(setup):
    """With `mlp_chunk` the MLP kernels' chunk gradients are summed in float32 and rounded to bf16 once."""
    config, batch, params, _ = setup
    config = config.with_runtime(dtype="bfloat16", mlp_chunk=16)
    mesh = make_mesh(2, 4, 1)
    want, _ = _step_gradients(config, batch, params, mesh)
    got, _ = _step_gradients(config, batch, params, mesh, compute_dtype_grads=True)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        name = jax.tree_util.keystr(path)
        np.testing.assert_array_equal(g, w.astype(jnp.bfloat16).astype(np.float32) if "layers" in name else w,
                                      err_msg=name)


def test_compute_dtype_grads_inside_accumulation_equal_the_float32_accumulation(setup):
    """`compute_dtype_grads_accum`: 2 microbatches differentiated with respect to the layers cast to bf16
    once per step (the microbatch loop receives bf16 layers) sum to the float32 accumulation's gradients exactly."""
    from vlm_jax.training.state import TrainState
    from vlm_jax.training.step import make_train_step

    config, batch, params, _ = setup
    config = config.with_runtime(dtype="bfloat16")
    mesh = make_mesh(1, 4, 1, devices=jax.devices()[:4])  # 4 rows per microbatch over 4 devices
    want, want_metrics = _step_gradients(config, batch, params, mesh, grad_accum_steps=2)
    options = dict(grad_accum_steps=2, compute_dtype_grads=True, compute_dtype_grads_accum=True)
    got, got_metrics = _step_gradients(config, batch, params, mesh, **options)
    np.testing.assert_array_equal(got_metrics["loss"], want_metrics["loss"])
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, w, err_msg=jax.tree_util.keystr(path))

    def loop_inputs(**opts):
        """dtypes of the stacked decoder-layer kernels the microbatch scan takes in."""
        step = make_train_step(Llava(config), optax.sgd(0.0), optax.constant_schedule(0.0), frozen=("vision_tower",),
                               **opts)
        state = TrainState(step=np.zeros((), np.int32), params=params, opt_state=optax.sgd(0.0).init(
            {k: v for k, v in params.items() if k != "vision_tower"}))
        jaxpr = jax.make_jaxpr(step)(state, batch)
        scan = next(e for e in jaxpr.eqns if e.primitive.name == "scan" and e.params["length"] == 2)
        layers = config.text_config.num_hidden_layers
        consts = scan.invars[:scan.params["num_consts"]]  # (then the float32 accumulator, the microbatches)
        return {str(v.aval.dtype) for v in consts if v.aval.ndim == 3 and v.aval.shape[0] == layers
                and jnp.issubdtype(v.aval.dtype, jnp.floating)}

    assert "bfloat16" in loop_inputs(**options)  # (the frozen vision tower's layers stay float32)
    assert loop_inputs(grad_accum_steps=2, compute_dtype_grads=True) == {"float32"}  # not applied without the flag


def test_hbm_refusal_is_read_from_both_xla_tpu_message_forms():
    """The compile ladder moves to the next memory option when XLA:TPU refuses a program for lack of HBM; its
    message comes in two forms (the second, verbatim from the 7B v6e-8 "2 microbatches" rung, once ended the
    ladder as an internal error); any other error is not a refusal."""
    from vlm_jax.training.aot import hbm_refusal_gib

    allocator = ("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. Ran out of memory "
                 "in memory space hbm. Used 31.27G of 31.25G hbm. Exceeded hbm capacity by 26.91M. Total hbm usage "
                 ">= 31.53G: reserved 260.00M program 21.65G arguments 9.62G Output size 9.59G")
    temporaries = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. 48.69G required for HLO temporaries "
                   "(48.69G) exceeds available HBM (30.75G)")
    assert hbm_refusal_gib(allocator) == 31.27
    assert hbm_refusal_gib(temporaries) == 48.69
    assert hbm_refusal_gib("RESOURCE_EXHAUSTED: out of host memory") is None
    assert hbm_refusal_gib("INVALID_ARGUMENT: Used 31.27G of 31.25G hbm") is None
