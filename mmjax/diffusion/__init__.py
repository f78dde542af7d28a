"""Discrete (and a little continuous) diffusion: one library, two samplers.

``d3pm``: transition matrices, forward process, posteriors, x0-parameterised reverse, hybrid loss, ancestral
sampler. ``maskgit``: the absorbing case seen as masked token modelling (mask schedules, training masks,
confidence decoding with CFG), used by Show-o. ``gaussian``: the continuous forward process and its closed
form.
"""

from mmjax.diffusion import d3pm, gaussian, maskgit
from mmjax.diffusion.d3pm import D3PM
from mmjax.diffusion.maskgit import decode, mask_schedule, masked_ce_loss, training_mask

__all__ = [
    "D3PM", "d3pm", "decode", "gaussian", "mask_schedule", "masked_ce_loss", "maskgit", "training_mask",
]
