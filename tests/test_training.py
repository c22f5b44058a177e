"""Drafter adaptation (ffjax/adaptation): Fast-dLLM v2 block-diffusion training, read as its specification."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ffjax
from ffjax import decoder
from ffjax.adaptation import lora, masking, objective, train
from ffjax.config import ModelConfig
from pallas_kernels import block_diffusion_training

BD = 8
L = 4 * BD
AR_CONFIG = ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=10000.0, rms_norm_eps=1e-6,
                        max_position_embeddings=512, tie_word_embeddings=False, qkv_bias=True, eos_token_ids=(2,))
CONFIG = train.drafter_config(AR_CONFIG, bd_size=BD, mask_token_id=63)
MASK = CONFIG.mask_token_id
noisy_logits = jax.jit(objective.noisy_logits, static_argnums=(0, 3))
loss_and_metrics = jax.jit(objective.loss_and_metrics, static_argnums=(0, 3))


@pytest.fixture(scope="module")
def params():
    return decoder.init_params(CONFIG, jax.random.key(0), jnp.float32, layout="stacked")


def clean_rows(batch, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(3, MASK, (batch, L)), jnp.int32)


def prompt_loss_mask(batch, prompt_len):
    return jnp.broadcast_to(jnp.arange(L) >= prompt_len, (batch, L))


def test_training_mask_is_the_three_rules_read_literally():
    mask = masking.training_mask(L, BD)
    assert masking.training_mask is block_diffusion_training.training_mask  # one construction in the project
    for i in range(2 * L):
        for j in range(2 * L):
            qi_clean, kj_clean = i >= L, j >= L
            qb, kb = (i % L) // BD, (j % L) // BD
            if not qi_clean and not kj_clean:
                expected = qb == kb  # M_BD: a noisy block sees itself, bidirectionally
            elif not qi_clean and kj_clean:
                expected = kb < qb  # M_OBC: a noisy block sees the clean blocks before it
            elif qi_clean and kj_clean:
                expected = kb <= qb  # M_BC: clean tokens see clean blocks block-causally
            else:
                expected = False  # clean tokens never see noisy ones
            assert mask[i, j] == expected, (i, j)


def test_complementary_pair_masks_every_eligible_token_exactly_once():
    batch, prompt_len = 16, 11
    x0 = clean_rows(batch)
    loss_mask = prompt_loss_mask(batch, prompt_len)
    b = masking.noised_pair(jax.random.key(3), x0, loss_mask, block_size=BD, mask_token_id=MASK)
    first, second = np.asarray(b.supervised[:batch]), np.asarray(b.supervised[batch:])
    eligible = np.asarray(loss_mask).copy()
    eligible[:, 0] = False  # token shift: position 0 has no output before it to be predicted from
    np.testing.assert_array_equal(first.astype(int) + second.astype(int), eligible.astype(int))
    assert not first[:, :prompt_len].any() and not second[:, :prompt_len].any()  # the prompt is never noised
    assert 0 < first.sum() < eligible.sum()  # both halves of the pair carry supervision
    # Inputs: [x_t ; x_0], x_t holding the mask token exactly where supervised.
    noisy, clean = np.asarray(b.inputs[:, :L]), np.asarray(b.inputs[:, L:])
    np.testing.assert_array_equal(clean, np.concatenate([x0, x0]))
    np.testing.assert_array_equal(noisy == MASK, np.asarray(b.supervised))
    np.testing.assert_array_equal(np.where(noisy == MASK, clean, noisy), clean)


def test_masking_ratio_is_drawn_per_block():
    # With t shared by a block's tokens, the masked fraction of a block varies far more than independent
    # per-token coins at the mean rate would allow (binomial std at p=0.5, n=8: 0.18; uniform t: ~0.31).
    loss_mask = jnp.ones((256, L), bool)
    masked = np.asarray(masking.complementary_masks(jax.random.key(0), loss_mask, BD)[:256])
    fractions = masked[:, BD:].reshape(256, -1, BD).mean(axis=2)  # skip block 0 (position 0 is ineligible)
    assert 0.4 < fractions.mean() < 0.6
    assert fractions.std() > 0.27


def test_noisy_block_sees_itself_and_earlier_clean_blocks_only(params):
    x0 = clean_rows(1, seed=1)
    all_masked = jnp.full((1, L), MASK, jnp.int32)  # t -> 1: the clean half is all a noisy query can use
    inputs = jnp.concatenate([all_masked, x0], axis=1)
    block = 2
    span = slice(block * BD, (block + 1) * BD)

    def noisy_block_logits(inp):
        return np.asarray(noisy_logits(CONFIG, params, inp, BD)[0, span])

    base = noisy_block_logits(inputs)

    def with_clean_block_changed(b):
        return inputs.at[0, L + b * BD: L + (b + 1) * BD].set((x0[0, b * BD:(b + 1) * BD] + 1) % MASK)

    for invisible in (block, block + 1):  # the block's own clean copy, and a future clean block
        np.testing.assert_allclose(noisy_block_logits(with_clean_block_changed(invisible)), base, atol=1e-6)
    assert np.abs(noisy_block_logits(with_clean_block_changed(block - 1)) - base).max() > 1e-3
    other_noisy_block = inputs.at[0, (block - 1) * BD].set(5)  # the noisy copy of an earlier block: invisible
    np.testing.assert_allclose(noisy_block_logits(other_noisy_block), base, atol=1e-6)
    own_noisy_block = inputs.at[0, block * BD + BD - 1].set(5)  # inside the block: seen, bidirectionally
    assert np.abs(noisy_block_logits(own_noisy_block)[0] - base[0]).max() > 1e-3


def test_training_forward_is_what_the_drafter_computes_at_inference(params):
    # The noisy block b over clean blocks < b is exactly a drafter pass over a cache holding those blocks.
    x0 = clean_rows(2, seed=2)
    masked = jnp.asarray(np.random.default_rng(0).random((2, L)) < 0.5).at[:, 0].set(False)
    noisy = jnp.where(masked, MASK, x0)
    inputs = jnp.concatenate([noisy, x0], axis=1)
    logits = noisy_logits(CONFIG, params, inputs, BD)
    for block in range(L // BD):
        end = (block + 1) * BD
        sequence = jnp.concatenate([x0[:, :block * BD], noisy[:, block * BD:end]], axis=1)
        expected = ffjax.forward(ffjax.Model(CONFIG, params), sequence)[:, block * BD:]  # block-causal
        np.testing.assert_allclose(logits[:, block * BD:end], expected, atol=2e-5)


def test_loss_is_token_shifted_cross_entropy_on_masked_positions(params):
    batch = masking.noised_pair(jax.random.key(1), clean_rows(2, seed=3), prompt_loss_mask(2, 5),
                                block_size=BD, mask_token_id=MASK)
    loss, metrics = loss_and_metrics(CONFIG, params, batch, BD)
    logits = np.asarray(noisy_logits(CONFIG, params, batch.inputs, BD), np.float64)
    terms = []
    for row in range(batch.targets.shape[0]):
        for i in range(L):
            if batch.supervised[row, i]:
                out = logits[row, i - 1]  # the prediction for position i is read from the output at i - 1
                log_z = np.log(np.exp(out - out.max()).sum()) + out.max()
                terms.append(log_z - out[int(batch.targets[row, i])])
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), np.mean(terms), rtol=1e-5)
    assert int(metrics["supervised"]) == len(terms)


@pytest.mark.parametrize("layout", ["stacked", "per_layer"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_zero_delta_merges_to_the_base_params(params, layout, dtype):
    base = jax.tree.map(lambda x: x.astype(dtype), params)
    base = decoder.unstack_layers(base) if layout == "per_layer" else base
    delta = lora.init_delta(CONFIG, base, jax.random.key(0), rank=4)
    merged = lora.merge(CONFIG, base, delta)
    assert jax.tree.structure(merged) == jax.tree.structure(base)
    jax.tree.map(lambda m, b: np.testing.assert_array_equal(np.asarray(m), np.asarray(b)) or
                 (m.dtype == b.dtype) or pytest.fail("dtype changed"), merged, base)


def test_merge_adds_the_low_rank_product_and_the_mask_row(params):
    delta = lora.init_delta(CONFIG, params, jax.random.key(0), rank=2, targets=("qkv", "down"))
    delta = jax.tree.map(lambda x: x + 0.01, delta)
    merged = lora.merge(CONFIG, params, delta)
    for name in ("qkv", "down"):
        f = delta["lora"][name]
        np.testing.assert_allclose(merged["layers"][name] - params["layers"][name],
                                   np.einsum("lir,lro->lio", f["a"], f["b"]), atol=1e-6)
    np.testing.assert_array_equal(merged["layers"]["o"], params["layers"]["o"])  # not a target
    changed_rows = np.nonzero(np.any(np.asarray(merged["embed"] != params["embed"]), axis=1))[0]
    assert changed_rows.tolist() == [MASK]  # only the mask token's embedding is learned


def test_merged_params_run_with_ffjax_entry_points(params):
    delta = jax.tree.map(lambda x: x + 0.01, lora.init_delta(CONFIG, params, jax.random.key(0), rank=2))
    model = ffjax.Model(CONFIG, lora.merge(CONFIG, params, delta))
    assert ffjax.forward(model, np.arange(3, 20)).shape == (17, CONFIG.vocab_size)
    out = ffjax.dllm_generate(model, np.arange(3, 14), 12, threshold=0.5, small_block_size=4)
    assert len(out.tokens) == 12 and MASK not in out.tokens.tolist()


def test_delta_round_trips_through_safetensors_and_manifest(params, tmp_path):
    delta = jax.tree.map(lambda x: x + 0.5, lora.init_delta(CONFIG, params, jax.random.key(0), rank=3))
    size = lora.delta_bytes(delta)
    a_sizes = sum(n.shape[1] * 3 + 3 * n.shape[2] for n in (params["layers"][t] for t in lora.DEFAULT_TARGETS))
    assert size == 2 * (CONFIG.num_layers * a_sizes + CONFIG.hidden_size)  # float16 factors + the mask row
    lora.save_delta(str(tmp_path), delta, {"base_model_sha256": "abc", "steps": 7})
    loaded, manifest = lora.load_delta(str(tmp_path))
    assert manifest["steps"] == 7 and manifest["base_model_sha256"] == "abc" and manifest["delta_bytes"] == size
    assert jax.tree.structure(loaded) == jax.tree.structure(delta)
    # What comes back is exactly what ``stored`` says will: the trained values rounded to float16.
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), loaded, lora.stored(delta))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3), loaded, delta)
    assert sorted(p.name for p in tmp_path.iterdir()) == [lora.DELTA_FILE, lora.MANIFEST_FILE]  # no pickle


def test_training_the_delta_learns_a_fixed_tiny_dataset(params):
    tc = train.TrainConfig(rank=8, learning_rate=1e-2, warmup_steps=3, steps=40, seed=0)
    x0 = clean_rows(4, seed=5)
    x0 = x0.at[:, 1::2].set(x0[:, 0::2])  # learnable structure: every odd token repeats the one before it
    loss_mask = prompt_loss_mask(4, 3)
    step = train.train_step(CONFIG, tc)
    state = train.init_state(CONFIG, params, tc)
    losses = []
    for _ in range(30):
        state, metrics = step(params, state, x0, loss_mask)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert int(state.step) == 30
    assert np.abs(np.asarray(state.delta["mask_embedding"])).max() > 0  # the mask row is trained
    assert all(np.abs(np.asarray(f["b"])).max() > 0 for f in state.delta["lora"].values())


def test_bf16_base_params_train_a_float32_delta(params):
    tc = train.TrainConfig(rank=4, seed=1)
    base = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    state = train.init_state(CONFIG, base, tc)
    state, metrics = train.train_step(CONFIG, tc)(base, state, clean_rows(2), prompt_loss_mask(2, 4))
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
    assert {x.dtype for x in jax.tree_util.tree_leaves(state.delta)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree_util.tree_leaves(base)} == {jnp.dtype(jnp.bfloat16)}


def test_drafter_config_adds_block_size_and_mask_token():
    assert (CONFIG.is_dllm, CONFIG.bd_size, CONFIG.mask_token_id) == (True, BD, 63)
    assert dataclasses.replace(CONFIG, model_type="qwen2", bd_size=None, mask_token_id=None) == AR_CONFIG
    with pytest.raises(ValueError, match="drafter config"):
        train.train_step(AR_CONFIG, train.TrainConfig())
