"""LM: real-size parameter counts, layouts (scan/unrolled), embeds input, KV cache, remat, config checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.lm import LM, LMConfig, get_config, init_cache, stack_layers, unstack_layers

# Counted from transformers models built on the meta device from the released configs.
REFERENCE_COUNTS = {
    "vicuna-7b": 6_738_415_616,
    "vicuna-13b": 13_015_864_320,
    "phi-1.5": 1_418_270_720,
    "qwen2-0.5b": 494_032_768,
    "qwen2-7b": 7_615_616_512,
}
TINY = ("tiny-llama", "tiny-phi", "tiny-qwen2")


def _ids(b=2, t=8, vocab=128, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, vocab)


def _init(cfg, ids=None):
    ids = _ids() if ids is None else ids
    return nn.unbox(jax.jit(LM(cfg).init)(jax.random.key(1), ids)["params"])


def _apply(cfg, **static):
    """A jitted apply: one compile instead of hundreds of eager ops on a shared 2-core CPU."""
    return jax.jit(lambda p, *a, **kw: LM(cfg).apply({"params": p}, *a, **kw, **static))


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_parameter_counts_match_reference_architectures(name):
    cfg = get_config(name)
    shapes = jax.eval_shape(lambda: LM(cfg).init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == REFERENCE_COUNTS[name]


def test_phi_showo_preset_has_extended_vocab_and_qk_norm():
    cfg = get_config("phi-1.5-showo")
    shapes = jax.eval_shape(lambda: LM(cfg).init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))["params"]
    shapes = nn.unbox(shapes)
    assert shapes["embed_tokens"]["embedding"].shape == (58498, 2048)
    assert shapes["layers"]["self_attn"]["q_norm"]["scale"].shape == (24, 64)


def test_logical_axis_names_on_params():
    boxed = jax.eval_shape(LM(get_config("tiny-llama")).init, jax.random.key(0), _ids())["params"]
    assert boxed["layers"]["self_attn"]["q_proj"]["kernel"].names == ("layers", "embed", "heads", "head_dim")
    assert boxed["layers"]["mlp"]["gate_proj"]["kernel"].names == ("layers", "embed", "mlp")
    assert boxed["embed_tokens"]["embedding"].names == ("vocab", "embed")
    assert boxed["lm_head"]["kernel"].names == ("embed", "vocab")


@pytest.mark.parametrize("name", TINY)
def test_scanned_and_unrolled_layouts_agree(name):
    cfg = get_config(name)
    p_scan = _init(cfg)
    p_unrolled = unstack_layers(p_scan, cfg.num_layers)
    assert "layers_1" in p_unrolled and "layers" not in p_unrolled
    ids = _ids()
    y_scan = _apply(cfg)(p_scan, ids)
    y_unrolled = _apply(cfg.replace(scan_layers=False))(p_unrolled, ids)
    assert y_scan.dtype == jnp.float32 and y_scan.shape == (2, 8, 128)
    np.testing.assert_allclose(y_scan, y_unrolled, atol=1e-5)
    restacked = stack_layers(p_unrolled, cfg.num_layers)
    jax.tree.map(np.testing.assert_array_equal, restacked, p_scan)


def test_family_structure():
    _init = lambda cfg: nn.unbox(jax.eval_shape(LM(cfg).init, jax.random.key(0), _ids())["params"])
    phi = _init(get_config("tiny-phi"))["layers"]
    assert "post_attention_layernorm" not in phi and "dense" in phi["self_attn"] and "fc1" in phi["mlp"]
    assert "bias" in phi["input_layernorm"]
    qwen = _init(get_config("tiny-qwen2"))
    assert "lm_head" not in qwen  # tied
    attn = qwen["layers"]["self_attn"]
    assert "bias" in attn["q_proj"] and "bias" not in attn["o_proj"]
    attn = _init(get_config("tiny-llama"))["layers"]["self_attn"]
    assert "bias" not in attn["q_proj"] and attn["k_proj"]["kernel"].shape[-2] == 2


def test_embeds_input_equals_ids_input():
    cfg = get_config("tiny-qwen2")
    p, ids = _init(cfg), _ids()
    model = LM(cfg)
    embeds = model.apply({"params": p}, ids, method=LM.embed)
    run = _apply(cfg)
    np.testing.assert_allclose(run(p, embeds=embeds), run(p, ids), atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        run(p, ids, embeds=embeds)


@pytest.mark.parametrize("scan", [True, False])
def test_cache_prefill_and_decode_match_full_pass(scan):
    cfg = get_config("tiny-phi", scan_layers=scan, qk_norm="layernorm")
    p, ids = _init(cfg), _ids(t=7)
    run = _apply(cfg)
    full = run(p, ids)
    cache = init_cache(cfg, 2, 12)
    logits, cache = run(p, ids[:, :5], cache=cache)
    steps = [logits]
    for t in (5, 6):
        logits, cache = run(p, ids[:, t:t + 1], cache=cache)
        steps.append(logits)
    layer_shape = (2, 12, cfg.kv_heads, cfg.dim_per_head)
    if scan:  # stacked over layers
        assert cache.k.shape == (cfg.num_layers, *layer_shape)
    else:  # one buffer per layer, updated in place by decode steps
        assert len(cache.k) == cfg.num_layers and all(k.shape == layer_shape for k in cache.k)
    assert int(cache.index) == 7
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)


def test_unrolled_for_decoding_computes_the_same_logits():
    from mmjax.models.lm import unrolled_for_decoding

    cfg = get_config("tiny-phi", scan_layers=True)
    p, ids = _init(cfg), _ids(t=7)
    model, params = unrolled_for_decoding(LM(cfg), p)
    assert not model.cfg.scan_layers and "layers_1" in params and "layers" not in params
    np.testing.assert_allclose(model.apply({"params": params}, ids), _apply(cfg)(p, ids), atol=1e-5)


def test_full_mask_without_causal_is_prefix_lm():
    """A bidirectional prefix of 3 tokens: changing token 2 changes position 0's logits; causal does not."""
    cfg = get_config("tiny-llama")
    p, ids = _init(cfg), _ids(t=6)
    t = 6
    prefix = jnp.tril(jnp.ones((t, t), bool)) | (jnp.arange(t)[None, :] < 3)
    ids2 = ids.at[:, 2].set((ids[:, 2] + 1) % 128)
    causal_run, full_run = _apply(cfg), _apply(cfg, is_causal=False)
    run = lambda x, mask=None, is_causal=True: (causal_run if is_causal else full_run)(p, x, mask=mask)
    bidir = lambda x: run(x, mask=prefix, is_causal=False)[:, 0]
    assert not np.allclose(bidir(ids), bidir(ids2))
    np.testing.assert_allclose(run(ids)[:, 0], run(ids2)[:, 0], atol=1e-6)
    causal = jnp.tril(jnp.ones((t, t), bool))
    np.testing.assert_allclose(run(ids, mask=causal, is_causal=False), run(ids), atol=1e-6)


def test_remat_policies_give_same_gradients():
    base = get_config("tiny-llama", num_layers=2)
    p, ids = _init(base), _ids()

    def grad(cfg):
        loss = lambda q: jnp.mean(jax.nn.logsumexp(LM(cfg).apply({"params": q}, ids), -1))
        return jax.jit(jax.grad(loss))(p)

    g0 = grad(base)
    for policy in ("full", "qkv_attention_out"):
        g1 = grad(base.replace(remat_policy=policy))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)


def test_bf16_compute_returns_float32_logits():
    cfg = get_config("tiny-llama", dtype="bfloat16")
    p = _init(get_config("tiny-llama"))
    out = _apply(cfg)(p, _ids())
    assert out.dtype == jnp.float32


def test_config_rejects_unknown_and_bad_fields():
    with pytest.raises(ValueError, match="unknown fields \\['hidden'\\]"):
        LMConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="unknown LM preset"):
        get_config("gpt-5")
    with pytest.raises(ValueError, match="num_kv_heads"):
        get_config("tiny-llama", num_kv_heads=3)
    with pytest.raises(ValueError, match="remat_policy"):
        get_config("tiny-llama", remat_policy="sometimes")
    assert get_config("phi-1.5").rotary_dim == 32
