"""CIEC backbone, paper section 2.2: image encoder, text encoder and the CFA (METER layout).

- ``vit_model``: CLIP-style ViT (timm ``VisionTransformer``): conv patch embedding without bias,
  class token, learned position embedding over 1+N tokens, ``norm_pre`` (CLIP ln_pre), ``depth``
  pre-LN blocks with QuickGELU (METER keeps 11 of CLIP's 12), final ``norm`` (ln_post) on every
  token, no projection head.  image (B, 3, S, S) -> V = [V_cls, V_pat] (B, 1+N, Dv), N = (S/p)^2.
  ``model.vit.local_radius`` (not in the paper; null = CLIP's global attention): an integer r restricts every
  ViT block's self-attention between patches to the (2r+1)x(2r+1) window around each patch on the grid (the class
  token still attends to and is seen by every token). A parameter-free locality prior for towers trained from
  scratch at toy scale (docs/implementation_notes.md "Local attention in the demo's ViT"); the parameters and their
  METER names are unchanged.
- ``text_transformer``: HF ``RobertaModel`` without pooler (roberta-base config by default).
  input_ids, attention_mask (B, L) -> T = [T_cls, T_tok] (B, L, Dt) (``last_hidden_state``).
- ``cfa``: ``models.cfa.CFA`` -> V_hat (B, 1+N, D), T_hat (B, L, D) and the two pooled
  features v_cls, t_cls (B, D) used by eq. 1.

``Backbone.set_grad_checkpointing(parts)`` (``train.grad_checkpointing``) switches activation checkpointing per part
through each library's own switch: timm's ``set_grad_checkpointing`` (one checkpoint per ViT block), transformers'
``activation_checkpointing_enable`` (one per RoBERTa layer) and ``CFA.grad_checkpointing`` (one per co-attention
step), all non-reentrant. It only applies in training mode with gradients enabled.

Parameter names follow METER after a fixed rename (``models/pretrained.py``): the METER keys
``cross_modal_*`` / ``token_type_embeddings`` live under ``cfa.``, ``text_transformer.*`` is
unchanged and ``vit_model.visual.*`` maps onto timm names under ``vit_model.``.
"""
from functools import partial

import torch
from timm.layers import LayerNorm, use_reentrant_ckpt
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import RobertaConfig, RobertaModel

from models.cfa import CFA


def build_vit(image_size, embed_dim, depth, num_heads, patch_size, mlp_ratio):
    """CLIP ViT tower in timm form (as ``vit_base_patch16_clip_quickgelu_224`` but any size/depth)."""
    return VisionTransformer(
        img_size=image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
        num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, class_token=True,
        pre_norm=True, final_norm=True, num_classes=0, global_pool="",
        norm_layer=partial(LayerNorm, eps=1e-5), act_layer="quick_gelu")


def build_text_encoder(vocab_size, hidden_size, num_layers, num_heads, intermediate_size,
                       max_position_embeddings, layer_norm_eps, pad_token_id=1, bos_token_id=0,
                       eos_token_id=2, dropout=0.1):
    """RobertaModel without pooler; defaults reproduce roberta-base's config.json."""
    config = RobertaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, layer_norm_eps=layer_norm_eps,
        type_vocab_size=1, hidden_act="gelu", hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout, pad_token_id=pad_token_id,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    return RobertaModel(config, add_pooling_layer=False)


def local_attention_mask(grid_size, radius):
    """(1+N, 1+N) bool, True where attention is allowed: patches (row-major on the ``grid_size`` grid) at Chebyshev
    distance <= ``radius``; the class token (index 0) attends to and is attended by every token."""
    rows, cols = torch.meshgrid(torch.arange(grid_size[0]), torch.arange(grid_size[1]), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    near = torch.maximum((rows[:, None] - rows[None]).abs(), (cols[:, None] - cols[None]).abs()) <= radius
    mask = torch.ones(1 + near.shape[0], 1 + near.shape[0], dtype=torch.bool)
    mask[1:, 1:] = near
    return mask


class Backbone(nn.Module):
    """ViT + RoBERTa + CFA.

    forward(image (B,3,S,S), input_ids (B,L), attention_mask (B,L)) -> dict
      v_raw (B,1+N,Dv), t_raw (B,L,Dt): encoder outputs (ViT after its final norm; RoBERTa last layer)
      v_hat (B,1+N,D), t_hat (B,L,D): CFA outputs
      v_cls, t_cls (B,D): image / text pooler outputs, tanh(Linear(token 0)).
    """

    def __init__(self, image_size, vit, text, cfa, hidden_size, pad_token_id=1):
        super().__init__()
        vit = dict(vit)
        self.local_radius = vit.pop("local_radius", None)
        self.vit_model = build_vit(image_size, **vit)
        self.text_transformer = build_text_encoder(pad_token_id=pad_token_id, **text)
        self.cfa = CFA(hidden_size=hidden_size, image_in_dim=vit["embed_dim"],
                       text_in_dim=text["hidden_size"], **cfa)
        self.grid_size = self.vit_model.patch_embed.grid_size
        mask = None if self.local_radius is None else local_attention_mask(self.grid_size, self.local_radius)
        self.register_buffer("vit_attn_mask", mask, persistent=False)   # not a parameter: METER keys unchanged

    def set_grad_checkpointing(self, parts=()):
        """Recompute the activations of ``parts`` (a subset of vit, text, cfa) in backward; () switches it off."""
        unknown = sorted(set(parts) - {"vit", "text", "cfa"})
        if unknown:
            raise ValueError(f"grad checkpointing parts are vit, text and cfa; got {unknown}")
        if "vit" in parts and use_reentrant_ckpt():
            raise ValueError("timm is set to re-entrant checkpointing (TIMM_REENTRANT_CKPT), which DDP with unused "
                             "parameters does not support; unset it")
        self.vit_model.set_grad_checkpointing("vit" in parts)
        if "text" in parts:
            self.text_transformer.activation_checkpointing_enable({"use_reentrant": False})
        else:
            self.text_transformer.activation_checkpointing_disable()
        self.cfa.grad_checkpointing = "cfa" in parts

    def encode_image(self, image, patch_mask=None, mask_token=None):
        """(B,3,S,S) -> V = [V_cls, V_pat] (B,1+N,Dv); with ``local_radius`` every block gets ``vit_attn_mask``.
        ``patch_mask`` (B,N) bool (pre-training's masked image modelling only): those patch embeddings are replaced
        by ``mask_token`` (1,1,Dv) before the position embedding (SimMIM's input masking)."""
        vit = self.vit_model
        if self.vit_attn_mask is None and patch_mask is None:
            return vit.forward_features(image)
        x = vit.patch_embed(image)
        if patch_mask is not None:
            x = torch.where(patch_mask[..., None], mask_token.to(x.dtype), x)
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))
        for block in vit.blocks:
            if vit.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, attn_mask=self.vit_attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=self.vit_attn_mask)
        return vit.norm(x)

    def encode_text(self, input_ids, attention_mask):
        """(B,L) ids and mask -> T = [T_cls, T_tok] (B,L,Dt). An encoder keeps no key/value cache (``use_cache``)."""
        return self.text_transformer(input_ids=input_ids, attention_mask=attention_mask,
                                     use_cache=False).last_hidden_state

    def forward(self, image, input_ids, attention_mask):
        v_raw, t_raw = self.encode_image(image), self.encode_text(input_ids, attention_mask)
        out = self.cfa(v_raw, t_raw, text_mask=attention_mask, image_mask=None)
        return {"v_raw": v_raw, "t_raw": t_raw, **out}


def build_backbone(cfg, pad_token_id=1):
    """Backbone from ``cfg["model"]`` and ``cfg["data"]["image_size"]``; ``pad_token_id`` from the tokenizer."""
    model = cfg["model"]
    return Backbone(image_size=cfg["data"]["image_size"], vit=dict(model["vit"]),
                    text=dict(model["text"]), cfa=dict(model["cfa"]),
                    hidden_size=model["hidden_size"], pad_token_id=pad_token_id)
