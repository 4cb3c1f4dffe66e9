"""What a least-squares re-fit of a layer reads: which layers it covers, the rows a
convolution's fit is made of, and the fit's constants. Shared by the ``"reconstruction"``
criterion (``importance.reconstruction``: what the re-fit could make up for without a
channel) and the re-fit itself (``recover.reconstruct``), which must agree on both."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MAX_ROWS = 20_000  # least-squares rows kept per layer (random positions), plenty for a fit
RIDGE = 1e-4  # relative Tikhonov term: keeps the fit stable when inputs are collinear
RECURRENT = (nn.LSTM, nn.RNN, nn.GRU)


def refits(layer: nn.Module | None, weight: str) -> bool:
    """Whether this re-fits the layer's weight of that name when the layer loses inputs: a
    Linear's or an ungrouped Conv2d's ``weight``, a one-layer recurrent layer's input
    weights."""
    if isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1):
        return weight == "weight"
    return (layer is not None and refittable_recurrent(layer)
            and weight in ("weight_ih_l0", "weight_ih_l0_reverse"))


def refittable_recurrent(module: nn.Module) -> bool:
    return (isinstance(module, RECURRENT) and module.num_layers == 1
            and getattr(module, "proj_size", 0) == 0)


def conv_patches(layer: nn.Conv2d, x: torch.Tensor, n: torch.Tensor, i: torch.Tensor,
                 j: torch.Tensor) -> torch.Tensor:
    """The convolution's input patches at output positions ``(n, i, j)``: one row each,
    channels by kernel position, as the weight is laid out."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    padded = F.pad(x, _paddings(layer), mode=mode)
    patches = [padded[n, :, i * sh + a * dh, j * sw + b * dw]
               for a in range(kh) for b in range(kw)]  # each (rows, channels)
    return torch.stack(patches, dim=2).flatten(1)


def _paddings(layer: nn.Conv2d) -> tuple[int, int, int, int]:
    """Padding added (left, right, top, bottom), as ``F.pad`` takes it; ``padding="same"``
    puts the odd one on the right and bottom, as the convolution does."""
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return 0, 0, 0, 0
        (kh, kw), (dh, dw) = layer.kernel_size, layer.dilation
        height, width = dh * (kh - 1), dw * (kw - 1)
        return width // 2, width - width // 2, height // 2, height - height // 2
    ph, pw = layer.padding
    return pw, pw, ph, ph
