"""Linear and embedding layers."""

from torch import nn

from .registry import register


@register(nn.Linear)
def sync_linear(module: nn.Linear) -> None:
    module.out_features, module.in_features = module.weight.shape


@register(nn.Embedding)
def sync_embedding(module: nn.Embedding) -> None:
    module.num_embeddings, module.embedding_dim = module.weight.shape


@register("transformers.pytorch_utils.Conv1D")
def sync_transposed_linear(module: nn.Module) -> None:
    """GPT-2's ``Conv1D`` keeps its weight as (in, out) and views its output to ``nf``."""
    module.nx, module.nf = module.weight.shape
