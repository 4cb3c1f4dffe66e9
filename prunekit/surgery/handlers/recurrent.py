"""Recurrent layers: sizes read back from the pruned weights, and the flat weight list the
fused kernels use rebuilt from the new parameters."""

from __future__ import annotations

from torch import nn

from .registry import register


@register(nn.RNNBase)
def recurrent(module: nn.RNNBase) -> None:
    module.input_size = module.weight_ih_l0.shape[1]
    if getattr(module, "proj_size", 0) > 0:
        module.proj_size = module.weight_hr_l0.shape[0]
        module.hidden_size = module.weight_hr_l0.shape[1]
    else:
        module.hidden_size = module.weight_hh_l0.shape[1]
    module._init_flat_weights()  # it still points at the unpruned tensors otherwise
