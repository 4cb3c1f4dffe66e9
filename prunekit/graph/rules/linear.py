"""Linear layers, matrix products and einsum."""

from __future__ import annotations

from ..axes import NotRepresentable, Spec
from .base import (
    arg,
    broadcast,
    rule,
)


@rule("linear")
def linear(ctx, args, kwargs, out):
    x, weight, bias = args[0], arg(args, kwargs, 1, "weight"), arg(args, kwargs, 2, "bias")
    xs, ws = ctx.specs(x), ctx.specs(weight)
    if weight.dim() != 2:
        raise NotRepresentable("linear with a weight that is not 2-d")
    ctx.unify(xs[-1], ws[1])
    ctx.role(weight, 0, "out")
    ctx.role(weight, 1, "in")
    if bias is not None:
        ctx.unify(ctx.specs(bias)[0], ws[0])
        ctx.role(bias, 0, "out")
    ctx.set(out, xs[:-1] + [ws[0]])


@rule("matmul", "mm", "bmm", "__matmul__", "__rmatmul__")
def matmul(ctx, args, kwargs, out):
    a, b = args[0], args[1]
    if a.dim() < 2 or b.dim() < 2:
        raise NotRepresentable("matmul with a 1-d operand")
    sa, sb = ctx.specs(a), ctx.specs(b)
    ctx.unify(sa[-1], sb[-2])  # the contracted channels
    batch = out.dim() - 2
    specs: list[Spec | None] = [None] * batch
    for tensor, tensor_specs in ((a, sa), (b, sb)):
        offset = batch - (tensor.dim() - 2)
        for d in range(tensor.dim() - 2):
            if tensor.shape[d] == out.shape[offset + d] and tensor.shape[d] != 1:
                if specs[offset + d] is None:
                    specs[offset + d] = tensor_specs[d]
                else:
                    ctx.unify(specs[offset + d], tensor_specs[d])
    specs = [s if s is not None else ctx.axes.fresh_spec(out.shape[d], "broadcast")
             for d, s in enumerate(specs)]
    ctx.set(out, specs + [sa[-2], sb[-1]])
    if b.dim() == 2:  # x @ W with W a parameter (GPT-2's Conv1D): W is (in, out)
        ctx.role(b, 0, "in")
        ctx.role(b, 1, "out")


@rule("grouped_mm", "_grouped_mm")
def grouped_mm(ctx, args, kwargs, out):
    """Mixture-of-experts matmul: rows of ``a`` (tokens sorted by expert) times their expert's
    matrix in ``b`` (experts, in, out). Every expert shares the in and out channels, so one
    channel is pruned in every expert at once; the experts themselves stay."""
    a, b = args[0], args[1]
    if a.dim() != 2 or b.dim() != 3 or out.dim() != 2:
        raise NotRepresentable("grouped matmul other than (tokens, in) × (experts, in, out)")
    sa, sb = ctx.specs(a), ctx.specs(b)
    ctx.unify(sa[-1], sb[-2])
    ctx.fix(b, f"experts in {ctx.module_path}", [0])
    ctx.set(out, [sa[0], sb[-1]])


@rule("addmm", "baddbmm")
def addmm(ctx, args, kwargs, out):
    # by keyword too: Bloom calls alibi.baddbmm(batch1=..., batch2=..., beta=..., alpha=...)
    bias = arg(args, kwargs, 0, "input")
    a = arg(args, kwargs, 1, "batch1") if "batch1" in kwargs else arg(args, kwargs, 1, "mat1")
    b = arg(args, kwargs, 2, "batch2") if "batch2" in kwargs else arg(args, kwargs, 2, "mat2")
    matmul(ctx, (a, b), {}, out)
    broadcast(ctx, [bias, out], out)
    if bias.dim() == 1:
        ctx.role(bias, 0, "out")


@rule("einsum")
def einsum(ctx, args, kwargs, out):
    """Dims with the same letter are the same channels; summed letters are contracted."""
    equation = args[0].replace(" ", "")
    operands = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    if "..." in equation or "->" not in equation:
        raise NotRepresentable("einsum without an explicit output or with an ellipsis")
    inputs, output = equation.split("->")
    by_letter: dict[str, Spec] = {}
    for letters, operand in zip(inputs.split(","), operands):
        for letter, spec, size in zip(letters, ctx.specs(operand), operand.shape):
            if size == 1:
                continue
            if letter in by_letter:
                ctx.unify(by_letter[letter], spec)
            else:
                by_letter[letter] = spec
    ctx.set(out, [by_letter.get(letter, [[]]) for letter in output])
