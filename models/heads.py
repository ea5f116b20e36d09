"""Multimodal binary head of eq. 1 (CIEC paper section 2.2).

logit = MLP(Concat(V-hat_cls, T-hat_cls)): Linear(2D, r*2D) -> LayerNorm -> GELU -> Linear(r*2D, 1), with the
hidden expansion ratio r = 2 taken relative to the MLP's input width 2D.
V-hat_cls and T-hat_cls are the CFA pooler outputs (tanh(Linear(token 0)), as in METER).

Inputs: v_cls (B,D), t_cls (B,D). Output: logit (B,) of p(pair is manipulated).
"""
import torch
import torch.nn as nn


class BinaryHead(nn.Module):
    def __init__(self, dim, hidden_ratio=2):
        super().__init__()
        width = 2 * dim
        self.mlp = nn.Sequential(nn.Linear(width, hidden_ratio * width), nn.LayerNorm(hidden_ratio * width),
                                 nn.GELU(), nn.Linear(hidden_ratio * width, 1))

    def forward(self, v_cls, t_cls):
        return self.mlp(torch.cat([v_cls, t_cls], dim=-1)).squeeze(-1)
