"""HF LLaMA / Phi (with and without QK LayerNorm) / Qwen2 checkpoints: logits and greedy-generation parity with
transformers, import -> export -> import round trips, strict key/shape errors, bf16, shards and prefixes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.convert.hf_lm import config_from_hf, hf_to_params, load_hf_lm, params_to_hf, save_hf_lm
from mmjax.convert.safetensors_io import load_safetensors, save_safetensors
from mmjax.models.generate import generate
from mmjax.models.lm import LM

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(2)
pytestmark = pytest.mark.parity

VOCAB = 97
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
VARIANTS = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **SMALL, num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
    "phi": lambda: transformers.PhiForCausalLM(transformers.PhiConfig(**SMALL, qk_layernorm=False)),
    "phi_qk": lambda: transformers.PhiForCausalLM(transformers.PhiConfig(**SMALL, qk_layernorm=True)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **SMALL, num_key_value_heads=2, tie_word_embeddings=True)),
}


def _build(name, tmp_path_factory):
    """A random-init HF model (every weight, norms and biases included, perturbed so a wrong mapping shows)."""
    torch.manual_seed(0)
    model = VARIANTS[name]().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.15 if p.ndim > 1 else 0.05))
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    return name, model, path


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def hf_model(request, tmp_path_factory):
    return _build(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def showo_like(tmp_path_factory):
    return _build("phi_qk", tmp_path_factory)


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids))).logits.float().numpy()


@pytest.mark.parametrize("scan", [True, False])
def test_logits_match_transformers(hf_model, scan):
    name, model, path = hf_model
    cfg, params = load_hf_lm(path, scan_layers=scan)
    assert cfg.qk_norm == ("layernorm" if name == "phi_qk" else None)
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 11))
    ours = jax.jit(lambda p, x: LM(cfg).apply({"params": p}, x))(params, ids)
    diff = float(np.abs(np.asarray(ours) - _hf_logits(model, ids)).max())
    print(f"{name} scan={scan}: max |logits diff| = {diff:.2e}")
    assert diff <= 1e-4


def test_greedy_generation_matches_transformers(hf_model):
    name, model, path = hf_model
    cfg, params = load_hf_lm(path)
    eos = model.generation_config.eos_token_id
    stops = () if eos is None else tuple(np.atleast_1d(eos).tolist())
    prompts = [np.array([5, 17, 3, 44, 8, 61]), np.array([9, 2, 71])]
    for prompt in prompts:
        with torch.no_grad():
            ref = model.generate(torch.tensor(prompt[None]), attention_mask=torch.ones(1, len(prompt), dtype=int),
                                 max_new_tokens=8, do_sample=False, pad_token_id=0)[0, len(prompt):].numpy()
        out = generate(LM(cfg), params, prompt[None], max_new_tokens=8, stop_tokens=stops)
        print(f"{name}: hf {ref.tolist()} mmjax {np.asarray(out.tokens[0]).tolist()}")
        np.testing.assert_array_equal(np.asarray(out.tokens[0, :int(out.lengths[0])]), ref)
    # A left-padded batch of both prompts gives the same tokens per row.
    p = max(map(len, prompts))
    batch = np.stack([np.pad(r, (p - len(r), 0)) for r in prompts])
    valid = np.stack([np.arange(p) >= p - len(r) for r in prompts])
    out = generate(LM(cfg), params, batch, prompt_valid=valid, max_new_tokens=8, stop_tokens=stops)
    for i, prompt in enumerate(prompts):
        single = generate(LM(cfg), params, prompt[None], max_new_tokens=8, stop_tokens=stops)
        np.testing.assert_array_equal(out.tokens[i], single.tokens[0])


def test_export_round_trip_and_transformers_reload(hf_model, tmp_path):
    _, model, path = hf_model
    cfg, params = load_hf_lm(path)
    save_hf_lm(params, cfg, tmp_path)
    original = load_safetensors(path)
    exported = load_safetensors(tmp_path)
    assert sorted(exported) == sorted(original)
    for k in original:
        np.testing.assert_array_equal(exported[k], original[k], err_msg=k)
    cfg2, params2 = load_hf_lm(tmp_path)
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, params2, params)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    ids = np.arange(10)[None] % VOCAB
    np.testing.assert_allclose(_hf_logits(reloaded, ids), _hf_logits(model, ids), atol=1e-6)


def test_unrolled_export_matches_scanned(hf_model):
    _, _, path = hf_model
    cfg, scanned = load_hf_lm(path)
    cfg_u, unrolled = load_hf_lm(path, scan_layers=False)
    a, b = params_to_hf(scanned, cfg), params_to_hf(unrolled, cfg_u)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_mismatched_checkpoints_list_every_problem(hf_model):
    name, _, path = hf_model
    cfg = config_from_hf(path)
    tensors = load_safetensors(path)
    bad = dict(tensors)
    del bad["model.layers.1.mlp." + ("fc2" if name.startswith("phi") else "down_proj") + ".weight"]
    bad["model.layers.0.self_attn.q_proj.weight"] = np.zeros((3, 3), np.float32)
    bad["vision_tower.extra"] = np.zeros(2, np.float32)
    with pytest.raises(ValueError) as err:
        hf_to_params(bad, cfg, source="bad.safetensors")
    msg = str(err.value)
    assert "bad.safetensors" in msg and "1 expected tensors missing" in msg and "mlp" in msg
    assert "model.layers.0.self_attn.q_proj.weight: expected (64, 64), found (3, 3)" in msg
    assert "vision_tower.extra" in msg
    with pytest.raises(ValueError, match="missing"):
        hf_to_params(tensors, cfg.replace(num_layers=3))


def test_bf16_sharded_and_prefixed_checkpoints(showo_like, tmp_path):
    """Format handling is model independent: checked once, on Show-o's layout (Phi with QK LayerNorm)."""
    _, model, path = showo_like
    cfg, params = load_hf_lm(path)
    tensors = load_safetensors(path)
    # Show-o stores its Phi under 'showo.' and in bf16.
    showo = {"showo." + k: v.astype(jnp.bfloat16) for k, v in tensors.items()}
    save_safetensors(showo, tmp_path / "showo", max_shard_bytes=64 * 1024)
    assert (tmp_path / "showo" / "model.safetensors.index.json").exists()
    _, loaded = load_hf_lm(tmp_path / "showo", cfg, prefix="showo.")
    want = jax.tree.map(lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), params)
    jax.tree.map(np.testing.assert_array_equal, loaded, want)
    with pytest.raises(ValueError, match="not consumed"):
        load_hf_lm(tmp_path / "showo", cfg)  # forgot the prefix
    # transformers itself reads the bf16 file written without torch.
    save_safetensors({k: v.astype(jnp.bfloat16) for k, v in tensors.items()}, tmp_path / "bf16")
    (tmp_path / "bf16" / "config.json").write_text((path / "config.json").read_text())
    reloaded = type(model).from_pretrained(tmp_path / "bf16", dtype=torch.float32)
    sd = reloaded.state_dict()
    key = "model.layers.0.self_attn.q_layernorm.weight"
    np.testing.assert_array_equal(sd[key].numpy(), want["layers"]["self_attn"]["q_norm"]["scale"][0])
    assert json.loads((path / "config.json").read_text())["qk_layernorm"] is True
