"""Convolutions: channel counts follow the weight; ``groups`` comes from the plan."""

from torch import nn

from .registry import register


@register(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def sync_conv(module: nn.Conv1d) -> None:
    module.out_channels = module.weight.shape[0]
    module.in_channels = module.weight.shape[1] * module.groups


@register(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def sync_conv_transpose(module: nn.ConvTranspose1d) -> None:
    module.in_channels = module.weight.shape[0]
    module.out_channels = module.weight.shape[1] * module.groups
