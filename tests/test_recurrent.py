"""Recurrent networks: the hidden size of LSTM, GRU and RNN layers pruned alike across gates,
layers and directions (with LSTM projections), and the embeddings and heads around them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk

from .helpers import check_pruned

with_projection = {"proj_size": 12}


class Tagger(nn.Module):
    """Embeddings → a recurrent stack → a linear head on the last step."""

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.rnn = rnn
        width = (rnn.proj_size or rnn.hidden_size) * (2 if rnn.bidirectional else 1)
        self.head = nn.Linear(width, 5)

    def forward(self, tokens):
        x = self.embed(tokens)
        if not self.rnn.batch_first:
            x = x.transpose(0, 1)
        output, _ = self.rnn(x)
        last = output[:, -1] if self.rnn.batch_first else output[-1]
        return self.head(last)


CASES = {
    "lstm": lambda: nn.LSTM(16, 32, batch_first=True),
    "lstm-stacked-bidirectional": lambda: nn.LSTM(16, 32, num_layers=2, bidirectional=True),
    "lstm-projection": lambda: nn.LSTM(16, 32, num_layers=2, batch_first=True, proj_size=12),
    "lstm-projection-bidirectional": lambda: nn.LSTM(16, 32, num_layers=2, bidirectional=True,
                                                     batch_first=True, proj_size=12),
    "gru-stacked": lambda: nn.GRU(16, 32, num_layers=3, batch_first=True),
    "gru-bidirectional-no-bias": lambda: nn.GRU(16, 32, bidirectional=True, bias=False),
    "rnn-relu": lambda: nn.RNN(16, 32, num_layers=2, nonlinearity="relu", batch_first=True),
}


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("case", CASES)
def test_recurrent_hidden_size_is_pruned_and_verified(case, tmp_path):
    torch.manual_seed(0)
    model = Tagger(CASES[case]()).eval()
    tokens = torch.randint(0, 50, (3, 7))
    result = check_pruned(model, tokens, pk.FilterPruning(0.5, "l1"), tmp_path)
    assert not result.skipped and not result.unknown_ops
    assert "torch.lstm" not in str(result)
    rnn = model.rnn
    pruned = pk.load(Tagger(CASES[case]()).eval(), tmp_path / "saved").rnn
    assert pruned.hidden_size == rnn.hidden_size // 2
    if rnn.proj_size:
        assert pruned.proj_size == rnn.proj_size // 2
    assert pruned.input_size == 8  # the embeddings were pruned with it


def test_a_returned_state_keeps_the_hidden_size():
    """The final hidden state is an output: its width, and so the hidden size, stay."""

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.rnn = nn.Embedding(50, 16), nn.GRU(16, 32, batch_first=True)

        def forward(self, tokens):
            return self.rnn(self.embed(tokens))[1]

    model = Encoder().eval()
    result = pk.prune(model, torch.randint(0, 50, (2, 5)), pk.FilterPruning(0.5))
    assert model.rnn.hidden_size == 32 and model.rnn.input_size == 8
    assert result.report.ok
