"""Multimodal binary head of eq. 1 (CIEC paper section 2.2).

logit = MLP(Concat(V-hat_cls, T-hat_cls)): Linear(2D, r*2D) -> LayerNorm -> GELU -> Linear(r*2D, 1), with the
hidden expansion ratio r = 2 taken relative to the MLP's input width 2D.
V-hat_cls and T-hat_cls are the CFA pooler outputs (tanh(Linear(token 0)), as in METER).

Inputs: v_cls (B,D), t_cls (B,D). Output: logit (B,) of p(pair is manipulated).
"""
import torch
import torch.nn as nn


def score_mlp(width, hidden_ratio=2):
    """Eq. 1's MLP form, (...,width) -> (...,1): Linear(width, r*width) -> LayerNorm -> GELU -> Linear(r*width, 1)."""
    hidden = hidden_ratio * width
    return nn.Sequential(nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, 1))


class BinaryHead(nn.Module):
    def __init__(self, dim, hidden_ratio=2):
        super().__init__()
        self.mlp = score_mlp(2 * dim, hidden_ratio)

    def forward(self, v_cls, t_cls):
        return self.mlp(torch.cat([v_cls, t_cls], dim=-1)).squeeze(-1)
