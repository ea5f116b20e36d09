"""Cross-modal Feature Alignment (CFA), CIEC paper section 2.2.

N1 stacked co-attention layers in a dual-stream layout (METER's fusion module): the text stream
and the image stream each run self-attention, cross-attention to the other stream and an FFN,
and both streams are updated simultaneously from the same old states.

    T = [T_cls, T_tok] (B, L, Dt)   --cross_modal_text_transform  + type 0-->  x (B, L, D)
    V = [V_cls, V_pat] (B, 1+N, Dv) --cross_modal_image_transform + type 1-->  y (B, 1+N, D)
    for i < N1:  x, y = text_layer_i(x, y), image_layer_i(y, x)
    T_hat = x (B, L, D);  V_hat = y (B, 1+N, D)
    t_cls = tanh(W_t x[:, 0]) (B, D);  v_cls = tanh(W_v y[:, 0]) (B, D)   (the two poolers)

The attribute names equal METER's (``BertCrossLayer``, ``heads.Pooler``) so a METER checkpoint
loads one-to-one: ``cross_modal_{text,image}_layers.i.{attention,crossattention}.{self.{query,key,
value},output.{dense,LayerNorm}}``, ``...intermediate.dense``, ``...output.{dense,LayerNorm}``,
``cross_modal_{text,image}_pooler.dense``, ``cross_modal_{text,image}_transform``,
``token_type_embeddings``. Layers are post-LN (BERT style), LayerNorm eps 1e-12, erf GELU, and
attention runs through ``F.scaled_dot_product_attention`` with an additive key mask of
(1 - mask) * -10000 (METER's extended attention mask); the image side is never masked.

Activation checkpointing (``train.grad_checkpointing`` with ``cfa``): with ``CFA.grad_checkpointing`` set, each
co-attention step (text layer i and image layer i together) runs under ``torch.utils.checkpoint`` (non-reentrant,
RNG state preserved), so only the two streams entering each step are kept for backward.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

LN_EPS = 1e-12          # BertConfig default used by METER's cross layers
MASK_VALUE = -10000.0   # METER's additive mask value for padded keys


def additive_key_mask(mask, dtype):
    """(B, Lk) 1/0 (or bool) key mask -> (B, 1, 1, Lk) additive mask in ``dtype``; None stays None."""
    if mask is None:
        return None
    keep = mask.to(dtype=dtype)
    return ((1.0 - keep) * MASK_VALUE)[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """BERT ``SelfAttention``: queries from ``hidden`` (B, Lq, D), keys/values from ``context`` (B, Lk, D)."""

    def __init__(self, hidden_size, num_heads, dropout):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)

    def _split(self, x):
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, hidden, context, context_mask=None):
        """Returns (B, Lq, D). ``context_mask`` (B, Lk): 1 = attend, 0 = padding; None = attend to all."""
        q, k, v = self._split(self.query(hidden)), self._split(self.key(context)), self._split(self.value(context))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=additive_key_mask(context_mask, q.dtype),
            dropout_p=self.dropout if self.training else 0.0)
        return out.transpose(1, 2).flatten(2)


class SublayerOutput(nn.Module):
    """Post-LN residual output: LayerNorm(dropout(dense(x)) + residual)."""

    def __init__(self, in_size, hidden_size, dropout):
        super().__init__()
        self.dense = nn.Linear(in_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=LN_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class AttentionBlock(nn.Module):
    """``attention`` / ``crossattention`` of METER's BertCrossLayer: ``self`` then ``output``."""

    def __init__(self, hidden_size, num_heads, dropout):
        super().__init__()
        self.self = MultiHeadAttention(hidden_size, num_heads, dropout)
        self.output = SublayerOutput(hidden_size, hidden_size, dropout)

    def forward(self, hidden, context, context_mask=None):
        return self.output(self.self(hidden, context, context_mask), hidden)


class Intermediate(nn.Module):
    """FFN expansion: erf GELU(dense(x))."""

    def __init__(self, hidden_size, intermediate_size):
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)

    def forward(self, x):
        return F.gelu(self.dense(x))


class BertCrossLayer(nn.Module):
    """One co-attention layer of one stream: self-attn -> cross-attn -> FFN, each post-LN.

    forward(hidden (B, Lq, D), context (B, Lk, D), hidden_mask (B, Lq) | None, context_mask (B, Lk) | None)
    -> (B, Lq, D).
    """

    def __init__(self, hidden_size, num_heads, intermediate_size, dropout):
        super().__init__()
        self.attention = AttentionBlock(hidden_size, num_heads, dropout)
        self.crossattention = AttentionBlock(hidden_size, num_heads, dropout)
        self.intermediate = Intermediate(hidden_size, intermediate_size)
        self.output = SublayerOutput(intermediate_size, hidden_size, dropout)

    def forward(self, hidden, context, hidden_mask=None, context_mask=None):
        h = self.attention(hidden, hidden, hidden_mask)
        h = self.crossattention(h, context, context_mask)
        return self.output(self.intermediate(h), h)


class Pooler(nn.Module):
    """METER ``heads.Pooler``: tanh(dense(x[:, 0])), (B, L, D) -> (B, D)."""

    def __init__(self, hidden_size):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        return torch.tanh(self.dense(x[:, 0]))


def init_meter_weights(module):
    """METER ``objectives.init_weights``: Linear/Embedding N(0, 0.02), biases 0, LayerNorm 1/0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class CFA(nn.Module):
    """Cross-modal Feature Alignment (section 2.2), METER-compatible parameter names.

    forward(v (B, 1+N, image_in_dim), t (B, L, text_in_dim), text_mask (B, L), image_mask (B, 1+N) | None)
    -> {"v_hat": (B, 1+N, D), "t_hat": (B, L, D), "v_cls": (B, D), "t_cls": (B, D)}.
    """

    def __init__(self, hidden_size, num_layers, num_heads, intermediate_size, dropout,
                 image_in_dim, text_in_dim):
        super().__init__()
        self.cross_modal_text_transform = nn.Linear(text_in_dim, hidden_size)
        self.cross_modal_image_transform = nn.Linear(image_in_dim, hidden_size)
        self.token_type_embeddings = nn.Embedding(2, hidden_size)  # row 0 text, row 1 image

        def layers():
            return nn.ModuleList(BertCrossLayer(hidden_size, num_heads, intermediate_size, dropout)
                                 for _ in range(num_layers))

        self.cross_modal_text_layers = layers()
        self.cross_modal_image_layers = layers()
        self.cross_modal_text_pooler = Pooler(hidden_size)
        self.cross_modal_image_pooler = Pooler(hidden_size)
        self.apply(init_meter_weights)
        self.grad_checkpointing = False

    def co_attention(self, i, x, y, text_mask, image_mask):
        """Step i: both streams updated from the same old states -> (x, y)."""
        text_layer, image_layer = self.cross_modal_text_layers[i], self.cross_modal_image_layers[i]
        return text_layer(x, y, text_mask, image_mask), image_layer(y, x, image_mask, text_mask)

    def forward(self, v, t, text_mask, image_mask=None):
        x = self.cross_modal_text_transform(t) + self.token_type_embeddings.weight[0]
        y = self.cross_modal_image_transform(v) + self.token_type_embeddings.weight[1]
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i in range(len(self.cross_modal_text_layers)):
            if recompute:
                x, y = checkpoint(self.co_attention, i, x, y, text_mask, image_mask, use_reentrant=False)
            else:
                x, y = self.co_attention(i, x, y, text_mask, image_mask)
        return {"v_hat": y, "t_hat": x,
                "v_cls": self.cross_modal_image_pooler(y), "t_cls": self.cross_modal_text_pooler(x)}
