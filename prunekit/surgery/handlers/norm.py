"""Normalisation layers and PReLU."""

from torch import nn

from .registry import register


def _channels(module: nn.Module) -> int:
    for name in ("weight", "running_mean", "bias"):
        tensor = getattr(module, name, None)
        if tensor is not None:
            return tensor.shape[0]
    raise AttributeError(f"{type(module).__name__} has no per-channel tensor")


@register(nn.modules.batchnorm._NormBase)
def sync_batch_norm(module: nn.modules.batchnorm._NormBase) -> None:
    if module.affine or module.track_running_stats:
        module.num_features = _channels(module)


@register(nn.GroupNorm)
def sync_group_norm(module: nn.GroupNorm) -> None:
    if module.affine:
        module.num_channels = module.weight.shape[0]


@register(nn.LayerNorm, nn.RMSNorm)
def sync_layer_norm(module: nn.LayerNorm | nn.RMSNorm) -> None:
    if module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)


@register(nn.PReLU)
def sync_prelu(module: nn.PReLU) -> None:
    module.num_parameters = module.weight.shape[0]
