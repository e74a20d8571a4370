"""`ComputedEmbedding`: the input embedding methods/embeddings/init.py installs when computed rows are frozen or
trained in factorized form (a separate module: init.py is imported at config time, without torch)."""

from __future__ import annotations

import torch
from torch import nn


class ComputedEmbedding(nn.Module):
    """An input embedding whose table is s * (coords [@ basis] @ proj), rows not computed kept in `rest`."""

    def __init__(self, coords: torch.Tensor, basis: torch.Tensor | None, proj: torch.Tensor, rest: torch.Tensor,
                 rest_ids: torch.Tensor, freeze: bool, train_proj: bool, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(coords.shape[0]), int(proj.shape[1])
        self.padding_idx = padding_idx
        self._put("coords", coords, not freeze)
        if basis is not None:
            self._put("basis", basis, not freeze)
        else:
            self.basis = None
        self._put("proj", proj, train_proj)
        self.register_buffer("rest_ids", rest_ids.long())
        self.rest = nn.Parameter(rest.clone())  # rows without a source row: the replaced init, trainable
        self._register_state_dict_hook(_add_weight)
        self._register_load_state_dict_pre_hook(_drop_weight)

    def _put(self, name: str, value: torch.Tensor, trainable: bool) -> None:
        if trainable:
            self.register_parameter(name, nn.Parameter(value.detach().clone()))
        else:
            self.register_buffer(name, value.detach().clone())

    def table(self) -> torch.Tensor:
        c = self.coords if self.basis is None else self.coords @ self.basis
        t = c @ self.proj
        if self.rest_ids.numel():
            t = t.index_copy(0, self.rest_ids, self.rest.to(t.dtype))
        return t

    @property
    def weight(self) -> torch.Tensor:
        return self.table()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.table())



def _add_weight(module, state, prefix, local_metadata):
    state[prefix + "weight"] = module.table().detach()
    return state


def _drop_weight(state, prefix, *args):
    state.pop(prefix + "weight", None)
