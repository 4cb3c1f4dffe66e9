"""Greedy least-squares elimination: the inputs a linear map's re-fit can best do without.

A linear map ``y = W x + b`` that loses some inputs and is then re-fitted by least squares on
the rest (what ``reconstruct=True`` does) misses exactly

    ``tr(Wᵦᵀ (Mᵦᵦ)⁻¹ Wᵦ)``,

``M`` the inverse of the inputs' Gram matrix and ``Wᵦ`` the rows of the fitted weights that
read the removed block ``β`` of inputs (the block form of Optimal Brain Surgeon; Hassibi & Stork
1993). Candidates go in order of that cost; after each removal ``M`` and ``W`` are down-dated,
so a candidate whose loss the others can stand in for goes early, and of two that duplicate
each other only one does, which scoring candidates one at a time cannot see.

A candidate's columns may feed several maps (a channel read by two convolutions); its cost is
then the mean of each map's cost relative to that map's output variance. Shared by the heads'
and the channels' ``"reconstruction"`` criteria.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .refit_rows import RIDGE

# Candidates removed per step: one at a time while few are left (every head, exactly), then
# a 64th of those left, so a 1,024-channel group takes about 300 steps, not 1,024. Each step
# down-dates the inverse at a cost of (columns removed × columns left²), so the total work is
# the same either way; what chunks save is the per-step copying and the cost evaluations.
CHUNK_DIVISOR = 64


@dataclass
class Fit:
    """One linear map's inputs, as the elimination sees them.

    Attributes:
        gram: ``Σ a aᵀ`` over the calibration rows, ``a`` the map's input with, when ``bias``,
            a last column of ones.
        columns: ``(candidates, k)``: each candidate's columns of ``gram``.
        variance: the output's total variance over those rows, ``Σ ‖y − ȳ‖²``.
        bias: the last column is the ones column (the bias is fitted, and never removed).
        weights: ``(columns, outputs)``: the map's own weights, bias row last; the fit it
            starts from when its outputs are exactly that map of the inputs.
        cross, energy: ``Σ a yᵀ`` and ``Σ ‖y‖²`` instead, when the outputs are given.
    """

    gram: torch.Tensor
    columns: torch.Tensor
    variance: torch.Tensor
    bias: bool = True
    weights: torch.Tensor | None = None
    cross: torch.Tensor | None = None
    energy: torch.Tensor | None = None


@dataclass
class _State:
    inverse: torch.Tensor  # of the (regularised) Gram matrix; removed columns' rows are zero
    solution: torch.Tensor  # the least-squares weights; removed columns' rows are zero
    position: torch.Tensor  # each original column's row in those, -1 once removed
    error: torch.Tensor  # the fit's squared error so far
    variance: torch.Tensor
    columns: torch.Tensor


def elimination_scores(fits: list[Fit]) -> torch.Tensor:
    """One score per candidate: the mean fraction of the maps' output variance left
    unexplained once it and every candidate before it are removed (non-decreasing in the
    order of removal, at most 1). Higher means keep."""
    states = [_start(fit) for fit in fits]
    count = fits[0].columns.shape[0]
    scores = torch.empty(count, dtype=torch.float64)
    left = torch.arange(count)
    while len(left):
        costs = sum(_costs(state, left) / state.variance for state in states)
        take = max(1, len(left) // CHUNK_DIVISOR)
        chosen = costs.argsort()[:take]
        before = _unexplained(states)
        for state in states:
            _remove(state, left[chosen])
        after = _unexplained(states)
        # within a chunk, cheapest first, spread evenly between the errors either side of it
        steps = torch.arange(1, take + 1, dtype=torch.float64) / take
        scores[left[chosen]] = (before + (after - before) * steps).clamp(max=1.0)
        rest = torch.ones(len(left), dtype=torch.bool)
        rest[chosen] = False
        left = left[rest]
    return scores


def _start(fit: Fit) -> _State:
    size = fit.gram.shape[0]
    inputs = size - 1 if fit.bias else size
    # the re-fit's relative ridge, none on the bias; scaled by the inputs' mean second moment
    # alone, where the re-fit's mean takes in the bias column's too
    regularised = fit.gram.double().clone()
    regularised.diagonal()[:inputs] += RIDGE * fit.gram.diagonal()[:inputs].double().mean().clamp_min(1e-12)
    factor, info = torch.linalg.cholesky_ex(regularised)
    inverse = torch.cholesky_inverse(factor) if info == 0 else torch.linalg.inv(regularised)
    if fit.weights is not None:
        solution, error = fit.weights.double().clone(), torch.zeros((), dtype=torch.float64)
    else:
        solution = inverse @ fit.cross.double()
        error = fit.energy.double() - (fit.cross.double() * solution).sum()
    return _State(inverse, solution, torch.arange(size), error,
                  fit.variance.double().clamp_min(1e-30), fit.columns)


def _costs(state: _State, candidates: torch.Tensor) -> torch.Tensor:
    """Each candidate's own cost, ``tr(Wᵦᵀ (Mᵦᵦ)⁻¹ Wᵦ)``, in pieces to bound memory."""
    costs = []
    per_piece = max(1, 2 ** 22 // (state.columns.shape[1] * state.solution.shape[1]))
    for piece in candidates.split(per_piece):
        where = state.position[state.columns[piece]]  # (piece, k)
        blocks = state.inverse[where[:, :, None], where[:, None, :]]  # (piece, k, k)
        weights = state.solution[where]  # (piece, k, outputs)
        costs.append((weights * torch.linalg.solve(blocks, weights)).sum((1, 2)))
    return torch.cat(costs).clamp_min(0)


def _remove(state: _State, candidates: torch.Tensor) -> None:
    """Down-date the inverse and the solution for the candidates' columns, in place (their
    rows and columns become zero), and add what the re-fit misses without them to the
    error. Once a quarter of the rows are removed ones, the matrices are compacted."""
    block = state.position[state.columns[candidates].flatten()]
    inner = state.inverse[block][:, block]
    across = state.inverse[:, block]
    removed = state.solution[block]
    state.error = state.error + (removed * torch.linalg.solve(inner, removed)).sum().clamp_min(0)
    state.solution.addmm_(across, torch.linalg.solve(inner, removed), alpha=-1)
    state.inverse.addmm_(across, torch.linalg.solve(inner, across.T), alpha=-1)
    state.solution[block] = 0  # exactly, where rounding left a trace
    state.inverse[block] = 0
    state.inverse[:, block] = 0
    state.position[state.columns[candidates].flatten()] = -1
    alive = (state.position >= 0).nonzero().flatten()
    if len(alive) < 0.75 * len(state.solution):
        rows = state.position[alive]
        state.inverse = state.inverse[rows][:, rows]
        state.solution = state.solution[rows]
        state.position[alive] = torch.arange(len(alive))


def _unexplained(states: list[_State]) -> torch.Tensor:
    return torch.stack([state.error / state.variance for state in states]).mean()
