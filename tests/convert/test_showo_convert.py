"""Show-o release checkpoints: a random HF PhiForCausalLM(qk_layernorm=True) renamed with the `showo.` prefix (and
a torch mm_projector for the CLIP-ViT variant) loads with every key checked and matches transformers' logits,
under a causal mask and under Show-o's omni-attention mask; export round-trips; bad files are refused."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from mmjax.convert.showo import load_showo, params_to_showo, save_showo
from mmjax.models import showo_layout as sl
from mmjax.models.showo import Showo, showo_lm_config
from mmjax.nn import masks

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(2)
pytestmark = pytest.mark.parity

VOCAB = sl.ShowoVocab(text_vocab_size=50, codebook_size=16, bos_id=0, eos_id=0)  # 77 ids


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A Show-o-with-CLIP-shaped release: (directory, HF model, torch projector)."""
    torch.manual_seed(0)
    hf = transformers.PhiForCausalLM(transformers.PhiConfig(
        vocab_size=VOCAB.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, qk_layernorm=True)).eval()
    projector = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 64)).eval()
    with torch.no_grad():
        for p in [*hf.parameters(), *projector.parameters()]:
            p.add_(torch.randn_like(p) * (0.15 if p.ndim > 1 else 0.05))
    tensors = {f"showo.{k}": v.numpy() for k, v in hf.state_dict().items()}
    tensors.update({f"mm_projector.{k}": v.numpy() for k, v in projector.state_dict().items()})
    path = tmp_path_factory.mktemp("showo_release")
    safetensors.numpy.save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"w_clip_vit": True, "vocab_size": VOCAB.vocab_size,
                                                  "llm_vocab_size": 50, "codebook_size": 16}))
    return path, hf, projector, tensors


def _cfg(**kw):
    return showo_lm_config(VOCAB, "tiny-phi", **kw)


@pytest.mark.parametrize("scan", [True, False])
def test_logits_match_transformers_causal_and_omni(release, scan):
    path, hf, _, _ = release
    model, params = load_showo(path, _cfg(scan_layers=scan), vocab=VOCAB)
    assert model.w_clip_vit and set(params) == {"lm", "mm_projector"}
    codes = np.random.default_rng(0).integers(0, 16, (2, 4))
    ids, _ = sl.t2i_layout(jnp.array([[5, 6, 7], [8, 9, 0]]), jnp.array([3, 2]), VOCAB.image_token(codes), VOCAB, 6)
    omni = masks.showo_mask(ids, pad_id=VOCAB.pad_id, soi_id=VOCAB.soi_id, eoi_id=VOCAB.eoi_id, mmu_id=VOCAB.mmu_id)
    causal = masks.causal_mask(ids.shape[1])
    run = jax.jit(lambda p, m: model.apply({"params": p}, ids, mask=m, is_causal=False))
    for mask in (causal, omni):
        with torch.no_grad():
            ref = hf(torch.tensor(np.asarray(ids)), attention_mask=torch.tensor(np.asarray(
                jnp.broadcast_to(mask, (2, 1, *ids.shape[1:] * 2))))).logits.numpy()
        diff = float(np.abs(np.asarray(run(params, mask)) - ref).max())
        print(f"scan={scan}: max |logits diff| = {diff:.2e}")
        assert diff <= 1e-4
    # The model's default mask is the omni mask.
    np.testing.assert_allclose(model.apply({"params": params}, ids), run(params, omni), atol=1e-5)


def test_projector_matches_torch(release):
    path, _, projector, _ = release
    model, params = load_showo(path, _cfg(), vocab=VOCAB)
    feats = np.random.default_rng(1).normal(size=(2, 5, 16)).astype(np.float32)
    ours = model.apply({"params": params}, feats, method=Showo.project_features)
    with torch.no_grad():
        ref = projector(torch.tensor(feats)).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_export_round_trip(release, tmp_path):
    path, _, _, tensors = release
    model, params = load_showo(path, _cfg(), vocab=VOCAB)
    exported = params_to_showo(params, model.cfg)
    assert set(exported) == set(tensors)
    for k, v in tensors.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)
    save_showo(params, model.cfg, tmp_path / "again", vocab=VOCAB)
    _, again = load_showo(tmp_path / "again", _cfg(), vocab=VOCAB)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


def test_every_key_is_checked(release, tmp_path):
    _, _, _, tensors = release
    extra = dict(tensors, **{"showo.model.layers.0.self_attn.extra.weight": np.zeros(3, np.float32)})
    safetensors.numpy.save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match="not consumed"):
        load_showo(tmp_path / "extra.safetensors", _cfg(), vocab=VOCAB, w_clip_vit=True)
    missing = {k: v for k, v in tensors.items() if "k_layernorm" not in k}
    safetensors.numpy.save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        load_showo(tmp_path / "missing.safetensors", _cfg(), vocab=VOCAB, w_clip_vit=True)
    with pytest.raises(ValueError, match="w_clip_vit=False"):
        load_showo(tmp_path / "extra.safetensors", _cfg(), vocab=VOCAB, w_clip_vit=False)
    with pytest.raises(ValueError, match="vocab_size"):
        load_showo(release[0], _cfg().replace(vocab_size=99), vocab=VOCAB)


def test_phi_init_keeps_phi_rows_and_leaves_new_parts_fresh(tmp_path):
    from flax import traverse_util

    from mmjax.convert.showo import phi_to_showo_params

    torch.manual_seed(1)
    hf = transformers.PhiForCausalLM(transformers.PhiConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4))
    hf.save_pretrained(tmp_path)
    cfg = _cfg(scan_layers=True)
    params = phi_to_showo_params(tmp_path, cfg, VOCAB, seed=0)
    fresh = jax.eval_shape(Showo(cfg, VOCAB).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    fresh = traverse_util.flatten_dict(jax.tree.map(lambda x: x.shape, nn.unbox(fresh["params"]["lm"])))
    loaded = traverse_util.flatten_dict(params)
    assert set(fresh) - set(loaded) == {k for k in fresh if k[-2] in ("q_norm", "k_norm")} != set()
    for k, v in loaded.items():
        assert v.shape == fresh[k], k
    emb = hf.model.embed_tokens.weight.detach().numpy()
    np.testing.assert_array_equal(params["embed_tokens"]["embedding"][:64], emb)
    assert params["embed_tokens"]["embedding"].shape == (VOCAB.vocab_size, 64)
    np.testing.assert_array_equal(params["lm_head"]["bias"][64:], 0.0)
    with pytest.raises(ValueError, match="architecture"):
        phi_to_showo_params(tmp_path, _cfg().replace(num_layers=3), VOCAB)
