"""Recurrent layers: ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (``torch.lstm``, ``torch.gru``,
``torch.rnn_tanh``, ``torch.rnn_relu``).

Each layer and direction has input weights ``(gates × hidden, input)``, recurrent weights
``(gates × hidden, hidden)`` and biases ``(gates × hidden)``, with the gates laid end to end;
an LSTM with ``proj_size`` also has ``(proj, hidden)`` projections, whose output is what
recurs and what the layer returns. Hidden unit ``j`` is row ``j`` of every gate, so each gate
block is tied to one hidden axis. The final states stack every layer and direction into one
tensor, so all of them share that axis (one group: the hidden size, pruned alike everywhere);
a layer's input is the concatenation of the directions of the layer below.
"""

from __future__ import annotations

from ..axes import NotRepresentable
from .base import rule

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _recurrent_rule(gates: int):
    def recurrent(ctx, args, kwargs, out):
        _couple(ctx, args, out, gates)

    return recurrent


for _op, _gates in GATES.items():
    rule(_op)(_recurrent_rule(_gates))


def _couple(ctx, args, out, gates: int) -> None:
    if len(args) < 9 or not isinstance(args[2], (list, tuple)):
        raise NotRepresentable("a packed sequence (its batch sizes come with the input)")
    x, params = args[0], list(args[2])
    has_biases, layers, bidirectional, batch_first = args[3], args[4], args[7], args[8]
    directions = 2 if bidirectional else 1
    per_direction = 2 + (2 if has_biases else 0)
    projected = len(params) > layers * directions * per_direction
    if projected:
        per_direction += 1
    if len(params) != layers * directions * per_direction:
        raise NotRepresentable("recurrent weights in an unexpected layout")
    xs = ctx.specs(x)
    hidden = None  # one axis for every layer and direction (the final states stack them)
    recurring = None  # what recurs and is returned: the hidden state, or its projection
    below = [xs[-1]]  # what the first layer reads: the input's features
    for layer in range(layers):
        outputs = []
        for direction in range(directions):
            start = (layer * directions + direction) * per_direction
            w_ih, w_hh = params[start], params[start + 1]
            biases = params[start + 2:start + 4] if has_biases else []
            w_hr = params[start + per_direction - 1] if projected else None
            size = (w_hr if w_hr is not None else w_hh).shape[1]
            for weight in [w_ih, w_hh, *biases]:
                for gate in ctx.axes.cut(ctx.specs(weight)[0], [size * g for g in range(1, gates)]):
                    hidden = _tie(ctx, hidden, gate)
                ctx.role(weight, 0, "out")
                if weight.dim() == 2:
                    ctx.role(weight, 1, "in")
            # the input weights read the layer below, its directions laid end to end
            reads = ctx.axes.cut(ctx.specs(w_ih)[1], _offsets(ctx, below))
            for read, source in zip(reads, below):
                ctx.unify(read, source)
            if w_hr is not None:
                ctx.unify(ctx.specs(w_hr)[1], hidden)
                ctx.role(w_hr, 0, "out")
                ctx.role(w_hr, 1, "in")
                recurring = _tie(ctx, recurring, ctx.specs(w_hr)[0])
            else:
                recurring = hidden
            ctx.unify(ctx.specs(w_hh)[1], recurring)
            outputs.append(recurring)
        below = outputs
    output, *states = out
    ctx.set(output, xs[:-1] + [[segment for spec in below for segment in spec]])
    batch = ([xs[0] if batch_first else xs[1]] if x.dim() == 3 else [])
    # (layers × directions, batch, features): h is what recurs, an LSTM's c the hidden state.
    # Initial states are not tied: one of another width makes the pruned model fail its
    # check, and that piece is left unpruned.
    for state, features in zip(states, [recurring, hidden]):
        ctx.set(state, [ctx.axes.fresh_spec(state.shape[0], "stacked layers"), *batch,
                        features])


def _tie(ctx, spec, other):
    if spec is None:
        return other
    ctx.unify(spec, other)
    return spec


def _offsets(ctx, parts) -> list[int]:
    offsets, total = [], 0
    for part in parts[:-1]:
        total += ctx.axes.spec_size(part)
        offsets.append(total)
    return offsets
