"""Boolean "may attend" masks, built inside jit from token ids or lengths.

Every mask here has shape (B, 1, T, T) (or (1, 1, T, T) when it does not depend on the batch) and dtype bool,
with True meaning "query row q may attend key column k". The singleton axis broadcasts over heads, which is
the layout `jax.nn.dot_product_attention(..., mask=...)` expects, so the default attention path passes these
booleans straight through; `mask_to_bias` exists only for backends that want an additive float bias instead.

Why masks are computed from ids rather than shipped with the batch: a (T, T) mask per row is T times bigger
than the row itself (387 -> 150k entries in Show-o pre-training), and every rule below is a handful of
comparisons and cumulative sums, cheap elementwise work that XLA fuses. Nothing loops over the
batch; all shapes are static, so every function is jit-compatible and special-token ids may be Python ints or
traced scalars.

Show-o's three reference masks (`create_attention_mask_predict_next`, `create_attention_mask_for_mmu` and, for
the CLIP-ViT variant, `create_attention_mask_for_mmu_vit` in the showlab/Show-o release) are reproduced exactly,
with one deliberate difference noted at `showo_mmu_mask`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
IdLike = int | Array

# The reference turns masks into biases with iinfo(int64).min cast to float32 (-9.223372e18), finite in
# float32 and bfloat16 alike. Pass it as `neg_value` to `mask_to_bias` for parity with their attention inputs.
REFERENCE_MASK_VALUE: float = float(np.float32(np.iinfo(np.int64).min))


def _positions(t: int) -> tuple[Array, Array]:
    """Query and key index grids of shape (1, T, 1) and (1, 1, T), broadcastable against (B, T, T)."""
    idx = jnp.arange(t)
    return idx[None, :, None], idx[None, None, :]


def _first_index(cond: Array, default: int) -> Array:
    """Index of the first True along the last axis, per row; `default` where a row has none."""
    return jnp.where(cond.any(axis=-1), jnp.argmax(cond, axis=-1), default)


def _last_index(cond: Array, default: int = -1) -> Array:
    """Index of the last True along the last axis, per row; `default` where a row has none."""
    t = cond.shape[-1]
    return jnp.where(cond.any(axis=-1), t - 1 - jnp.argmax(cond[..., ::-1], axis=-1), default)


def _image_spans(ids: Array, soi_id: IdLike, eoi_id: IdLike) -> tuple[Array, Array]:
    """(in_image, span_number) per token: soi..eoi inclusive is "in image"; span_number counts sois so far.

    This is Show-o's rule 1: `cumsum(soi) > cumsum(eoi)` marks the tokens strictly inside an image, and the
    soi / eoi delimiters themselves are added back, so a delimiter attends like the image it delimits.
    """
    is_soi, is_eoi = ids == soi_id, ids == eoi_id
    n_soi = jnp.cumsum(is_soi, axis=-1)
    n_eoi = jnp.cumsum(is_eoi, axis=-1)
    return (n_soi > n_eoi) | is_soi | is_eoi, n_soi


def causal_mask(t: int) -> Array:
    """Lower-triangular (1, 1, T, T) mask: token q sees tokens 0..q. Broadcasts against any batch."""
    q, k = _positions(t)
    return (k <= q)[:, None]


def lengths_to_valid(lengths: Array, t: int, *, left_padded: bool = False) -> Array:
    """(B,) valid lengths -> (B, T) bool validity, for right- (default) or left-padded rows."""
    idx = jnp.arange(t)[None, :]
    lengths = jnp.asarray(lengths)[:, None]
    return idx >= t - lengths if left_padded else idx < lengths


def padding_mask(valid: Array) -> Array:
    """Key-padding mask from (B, T) validity: nobody attends padded keys, except a pad attending itself.

    The diagonal is kept for pad rows so that no row is fully masked (a fully masked row is uniform attention
    in the XLA path but NaN in some fused kernels); a valid row never sees a pad either way. Combine with
    other masks by `&`, e.g. `causal_mask(T) & padding_mask(valid)`.
    """
    t = valid.shape[-1]
    q, k = _positions(t)
    return (valid[:, None, :] | (q == k))[:, None]


def prefix_lm_mask(prefix_len: Array, t: int) -> Array:
    """Prefix-LM: keys k < prefix_len[b] are visible to every row (bidirectional prefix); the rest is causal.

    `prefix_len` is (B,) ints (a scalar broadcasts). Used for LLaVA-style "image + instruction" prefixes and
    for prefilling a KV cache whose prefix was encoded bidirectionally.
    """
    prefix_len = jnp.atleast_1d(jnp.asarray(prefix_len))[:, None, None]
    q, k = _positions(t)
    return ((k <= q) | (k < prefix_len))[:, None]


def showo_t2i_mask(ids: Array, *, pad_id: IdLike, soi_id: IdLike, eoi_id: IdLike,
                   rm_pad_in_image: bool = True) -> Array:
    """Show-o's omni-attention for T2I and LM rows (`create_attention_mask_predict_next` semantics).

    Rules (showo.md): text rows are causal; rows inside soi..eoi attend every key; with `rm_pad_in_image`, (a)
    text rows after the row's last pad lose every key up to that pad, and (b) image rows at or after the first
    soi lose all pad keys. Pad rows keep causal attention, so no row is ever fully masked. For Show-o's
    layouts (contiguous left padding before `<|t2i|>`, one image at the end) this means "non-pad rows never
    see pads"; for LM rows (no image, right pads) it reduces to plain causal, so the same call serves a
    [t2i; lm] batch.

    Where showo.md's summary says "every row q >= pos(soi) loses all pad keys", the reference applies that to
    the image rows only; text rows after an image lose pads only through rule (a). The two differ only when a
    pad follows the soi, which no Show-o layout produces; we follow the reference. The reference finds soi
    with a batch-flattened `torch.where`, which assumes exactly one soi per row; we take each row's first soi
    (in a row without one, rule (b) removes nothing).
    """
    b, t = ids.shape
    q, k = _positions(t)
    in_image, _ = _image_spans(ids, soi_id, eoi_id)
    text_rows = k <= q
    image_rows = jnp.ones((b, t, t), bool)
    if rm_pad_in_image:
        is_pad = ids == pad_id
        last_pad = _last_index(is_pad)[:, None, None]  # -1 for a row without pads: removes nothing
        text_rows = text_rows & ~((q > last_pad) & (k <= last_pad))
        first_soi = _first_index(ids == soi_id, t)[:, None, None]
        image_rows = ~((q >= first_soi) & is_pad[:, None, :])
    return jnp.where(in_image[:, :, None], image_rows, text_rows)[:, None]


def showo_mmu_mask(ids: Array, *, eoi_id: IdLike, pad_id: IdLike | None = None) -> Array:
    """Show-o's MMU mask: causal, plus every key up to the row's `<|eoi|>` visible to every row.

    So `<|mmu|><|soi|>img<|eoi|>` is a bidirectional prefix and the text after it is causal over everything
    before it. A row without eoi is plain causal.

    Deliberate difference from the reference (`create_attention_mask_for_mmu`): the reference takes the eoi
    position of row 0 and applies it to every row, which is only right when all rows share one layout. mmjax
    takes it per row, so rows with different prefix lengths (batched MMU inference with left padding,
    variable-size images) are each masked correctly; on batches where all rows share the eoi position the two
    are identical.

    The reference does not mask pads here (right pads only ever follow the text, so causality hides them from
    real tokens). Pass `pad_id` to also hide pad keys from non-pad rows, which batched, left-padded inference
    prompts need so that a row's output does not depend on how much padding its batch-mates forced on it.
    """
    t = ids.shape[-1]
    q, k = _positions(t)
    eoi = _first_index(ids == eoi_id, -1)[:, None, None]
    allowed = (k <= q) | (k <= eoi)
    if pad_id is not None:
        is_pad = ids == pad_id
        allowed = allowed & (is_pad[:, :, None] | ~is_pad[:, None, :])
    return allowed[:, None]


def showo_mmu_vit_mask(ids: Array, *, soi_id: IdLike, eoi_id: IdLike, pad_id: IdLike | None = None) -> Array:
    """Show-o-with-CLIP-ViT's MMU mask: causal, plus the feature columns (strictly between the row's first
    `<|soi|>` and the first `<|eoi|>` after it) visible to every row.

    This is the reference's `create_attention_mask_for_mmu_vit`: for its layout `<|mmu|> system <|soi|> feats
    <|eoi|> text` it opens columns [1 + system_len + 1, 1 + system_len + 1 + 576) of the causal mask to all rows,
    and nothing else: `<|mmu|>`, the system prompt, `<|soi|>` and `<|eoi|>` stay causal (unlike the discrete
    variant's `showo_mmu_mask`, where the whole prefix up to `<|eoi|>` is bidirectional). Rows before the features
    therefore see them too, exactly as the reference's column assignment does. The reference places the span
    by fixed offsets; here it is found per row from the delimiters, which is the same for its layout and also
    right for left-padded batched prompts. A row without a closed soi..eoi span is plain causal.

    As in `showo_mmu_mask`, pads are not masked unless `pad_id` is given (right pads follow the text, so
    causality hides them); inference prompts, left-padded, pass it so that pad keys are hidden from real rows.
    """
    t = ids.shape[-1]
    q, k = _positions(t)
    soi = _first_index(ids == soi_id, t)
    after_soi = jnp.arange(t)[None, :] > soi[:, None]
    eoi = _first_index((ids == eoi_id) & after_soi, -1)
    features = (k > soi[:, None, None]) & (k < eoi[:, None, None])
    allowed = (k <= q) | features
    if pad_id is not None:
        is_pad = ids == pad_id
        allowed = allowed & (is_pad[:, :, None] | ~is_pad[:, None, :])
    return allowed[:, None]


def showo_mask(ids: Array, *, pad_id: IdLike, soi_id: IdLike, eoi_id: IdLike, mmu_id: IdLike,
               mmu_features: bool = False) -> Array:
    """The mask for a mixed Show-o training batch, choosing per row by its task token.

    Rows that contain `<|mmu|>` get `showo_mmu_mask` (or, with `mmu_features`, the CLIP-ViT variant's
    `showo_mmu_vit_mask`, whose soi..eoi span holds continuous features); all other rows (T2I, LM) get
    `showo_t2i_mask` with `rm_pad_in_image=True`, which is what the reference builds for its [t2i; lm; mmu]
    batch, without the caller having to pass the sub-batch sizes.
    """
    is_mmu = (ids == mmu_id).any(axis=-1)[:, None, None, None]
    t2i = showo_t2i_mask(ids, pad_id=pad_id, soi_id=soi_id, eoi_id=eoi_id, rm_pad_in_image=True)
    if mmu_features:
        mmu = showo_mmu_vit_mask(ids, soi_id=soi_id, eoi_id=eoi_id)
    else:
        mmu = showo_mmu_mask(ids, eoi_id=eoi_id)
    return jnp.where(is_mmu, mmu, t2i)


def omni_mask(ids: Array, *, pad_id: IdLike, soi_id: IdLike, eoi_id: IdLike) -> Array:
    """General mixed-modality omni-attention for rows holding any number of soi..eoi image spans.

    Text is causal; the tokens of one image span (soi..eoi inclusive) attend each other fully; text and images
    are causal over everything before them; pads are never attended by non-pad rows (pad rows keep their
    causal row, so none is fully masked). An unclosed span (soi without eoi yet, as while generating an image)
    extends to the end.

    This is what Show-o's T2I mask becomes when a row interleaves several images with text. On Show-o's own
    T2I and LM layouts it equals `showo_t2i_mask` exactly (the single image is last, so "full row" and "causal
    + own span" coincide); it differs from the MMU mask, whose `<|mmu|>` token joins the bidirectional prefix.
    """
    t = ids.shape[-1]
    q, k = _positions(t)
    in_image, span = _image_spans(ids, soi_id, eoi_id)
    same_span = in_image[:, :, None] & in_image[:, None, :] & (span[:, :, None] == span[:, None, :])
    is_pad = ids == pad_id
    allowed = ((k <= q) | same_span) & (is_pad[:, :, None] | ~is_pad[:, None, :])
    return allowed[:, None]


def mask_to_bias(mask: Array, dtype: jnp.dtype = jnp.float32, neg_value: float | None = None) -> Array:
    """Additive attention bias from a boolean mask: 0 where allowed, a large negative where not.

    Only for backends that cannot take a boolean mask (the default XLA / cuDNN path through
    `jax.nn.dot_product_attention` takes the boolean directly, which is cheaper and exact). The default
    negative is the dtype's most negative finite value, so a fully masked row stays finite;
    `REFERENCE_MASK_VALUE` reproduces the reference's bias.
    """
    neg = jnp.finfo(dtype).min if neg_value is None else neg_value
    return jnp.where(mask, jnp.zeros((), dtype), jnp.asarray(neg, dtype))
