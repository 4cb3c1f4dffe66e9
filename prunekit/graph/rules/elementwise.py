"""Pointwise ops: every input dim that lines up with an output dim carries the same channels."""

from __future__ import annotations

from ..axes import NotRepresentable
from .base import (
    broadcast,
    rule,
    tensors_of,
)

POINTWISE = """
relu relu_ relu6 gelu silu silu_ sigmoid sigmoid_ tanh tanh_ hardswish hardswish_ hardsigmoid
hardtanh hardtanh_ leaky_relu leaky_relu_ elu elu_ selu celu softplus softsign mish tanhshrink
logsigmoid threshold glu_pointwise dropout dropout_ dropout1d dropout2d dropout3d alpha_dropout
feature_alpha_dropout clamp clamp_ clip clamp_min clamp_max abs neg negative exp exp_ log log1p
log2 sqrt rsqrt square sin cos erf erfc sign reciprocal floor ceil round trunc frac sgn
contiguous clone detach detach_ float half double bfloat16 bool long int cpu
nan_to_num logical_not isnan isinf isfinite empty_like full_like rand_like randn_like bitwise_not __neg__ __abs__ __invert__ __pos__ expm1 exp2
add add_ sub sub_ subtract mul mul_ multiply div div_ divide true_divide floor_divide remainder
fmod pow pow_ maximum minimum fmax fmin eq ne lt le gt ge where masked_fill masked_fill_ lerp
logical_and logical_or logical_xor bitwise_and bitwise_or addcmul addcdiv rsub atan2 hypot
copysign xlogy __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__
__truediv__ __rtruediv__ __itruediv__ __floordiv__ __rfloordiv__ __pow__ __rpow__ __ipow__
__mod__ __and__ __or__ __xor__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__ __iand__ __ior__
""".split()


@rule(*POINTWISE)
def pointwise(ctx, args, kwargs, out):
    outs = tensors_of(out)
    if len(outs) != 1:
        raise NotRepresentable("pointwise op with several outputs")
    broadcast(ctx, tensors_of(args) + tensors_of(list(kwargs.values())), outs[0])


@rule("to", "type", "type_as", "zero_", "fill_", "normal_", "uniform_", "requires_grad_")
def same_as_self(ctx, args, kwargs, out):
    """Same layout as the tensor it is called on; other tensor arguments only give dtype."""
    ctx.set(out, ctx.specs(args[0]))


@rule("new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "zeros", "ones", "empty",
      "full", "arange", "linspace", "eye", "rand", "randn", "randint", "tensor", "as_tensor",
      "meshgrid", "ones_like", "zeros_like")
def new_tensor(ctx, args, kwargs, out):
    """A new tensor whose values do not come from any input: its dims are its own, fixed."""
    for result in tensors_of(out):
        ctx.fresh(result, f"tensor created in {ctx.module_path}")


@rule("numpy", "tolist", "__array__")
def leaves_torch(ctx, args, kwargs, out):
    """Values that leave torch come back as new tensors the trace cannot connect: the dims
    they left from must keep every channel."""
    for tensor in tensors_of(args):
        ctx.fix(tensor, f"values leave torch (.numpy()/.tolist()) in {ctx.module_path}")
