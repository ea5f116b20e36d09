"""METER's two pre-training heads and the pre-training model (the backbone of CIEC paper section 2.2 starts
from METER, section 3.2; METER: Dou et al., CVPR 2022, section 3.3 "pre-training objectives").

Attribute names are METER's, so ``models/meter_export.py`` writes ``mlm_score.*`` / ``itm_score.*`` verbatim:

- ``MLMHead`` (``mlm_score``): ``transform.dense`` (D,D) -> erf GELU -> ``transform.LayerNorm`` (eps 1e-12) ->
  ``decoder`` (V,D, no bias) + ``bias`` (V,). Input (M,D) text-stream features of the masked positions,
  output (M,V) logits.
- ``ITMHead`` (``itm_score``): ``fc`` Linear(2D, 2) on Concat(t_cls, v_cls) (METER's ``cls_feats``: text pooler
  first). Inputs (B,D), (B,D); output (B,2) logits (class 1 = matched pair).

- ``ITCHead`` (optional, ``pretrain.itc``; NOT part of METER, which trains only MLM and ITM): ALBEF's image-text
  contrastive head (Li et al. 2021, eq. 1-2) on the UNIMODAL features before the CFA: ``image_proj`` (Dv->P) on the
  ViT's V_cls and ``text_proj`` (Dt->P) on RoBERTa's T_cls of the plain caption, L2-normalised, times
  exp(``logit_scale``) (learnable, CLIP's init 1/0.07, capped at 100). Inputs (B,Dv), (B,Dt); output (B,B) logits,
  row i = image i against every caption of the batch. It is a pre-training head only: the METER export leaves it
  out (docs/implementation_notes.md "Pre-training": why it is there).

- ``RUDHead`` (optional, ``pretrain.rud_weight``; NOT part of METER): replaced-unit detection, ELECTRA's token-level
  discriminator (Clark et al. 2020) made cross-modal: ``fc`` Linear(D, 1) on the CFA text stream T-hat of the ITM
  pairs, one logit per token (1 = this word was swapped in and disagrees with the picture). Linear on purpose:
  VCTG's coarse head (paper 2.4.1) projects the same T-hat, so what RUD teaches must be linearly readable there.
  Input (B,L,D), output (B,L). A pre-training head only: the METER export leaves it out.

- ``MIMHead`` (optional, ``pretrain.mim_weight``; NOT part of METER): SimMIM's masked image modelling (Xie et al.,
  CVPR 2022): a learned ``mask_token`` (1,1,Dv) replaces the embeddings of the masked patches at the ViT's input and
  ``fc`` Linear(Dv, 3p^2) predicts each masked patch's pixels (normalised as the model sees them) from the ViT's
  output at that patch. It gives every patch a local objective of its own (docs/implementation_notes.md
  "Pre-training"). Input (B,N,Dv), output (B,N,3p^2). A pre-training head only: the METER export leaves it out.

``MeterPretrainer(backbone, vocab_size, itc_dim=None, rud=False, mim=False)`` runs METER's two objectives (and ITC)
in one forward:

    batch: image (B,3,S,S); mlm_ids, input_ids, attention_mask (B,L); mlm_labels (B,L) (-100 off masked
           tokens); itm_text (B,) long: the batch row whose caption is paired with image i for ITM; or, with
           one-word negatives (``pretrain.itm_word_neg_prob``), itm_ids / itm_mask (B,L): that caption itself
    V = ViT(image) once; T = RoBERTa([mlm_ids; input_ids]) in one call of 2B rows ([...; itm_ids]: 3B rows)
    CFA on 2B pairs: (V_i, masked caption_i) for MLM and (V_i, caption_itm_text[i]) for ITM
    -> {"mlm_logits": (M,V) at the M masked positions, "mlm_labels": (M,), "itm_logits": (B,2)}
       + {"itc_logits": (B,B)} with ``itc_dim`` (ITCHead on V[:, 0] and the plain captions' T[:, 0])
       + {"rud_logits": (B,L)} with ``rud`` (RUDHead on the ITM pairs' T-hat)
       + {"mim_pred", "mim_target": (K,3p^2)} with ``mim`` and a ``mim_mask`` (B,N) bool in the batch: a second
         ViT pass on the masked picture, at its K masked patches

The two losses are in ``losses/meter.py``.

The MLM stream is the CFA text stream T-hat (what VCTG reads), conditioned on the true image; the ITM logits
read the two poolers (what the eq. 1 head reads). ``mlm_logits`` runs MLM alone, for validation with the true
or a swapped picture.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.cfa import LN_EPS, init_meter_weights


class PredictionTransform(nn.Module):
    """BERT ``PredictionHeadTransform``: LayerNorm(GELU(dense(x)))."""

    def __init__(self, hidden_size):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=LN_EPS)

    def forward(self, x):
        return self.LayerNorm(F.gelu(self.dense(x)))


class MLMHead(nn.Module):
    def __init__(self, hidden_size, vocab_size):
        super().__init__()
        self.transform = PredictionTransform(hidden_size)
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x):
        return self.decoder(self.transform(x)) + self.bias


class ITMHead(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.fc = nn.Linear(2 * hidden_size, 2)

    def forward(self, t_cls, v_cls):
        return self.fc(torch.cat([t_cls, v_cls], dim=-1))


class ITCHead(nn.Module):
    def __init__(self, image_dim, text_dim, proj_dim):
        super().__init__()
        self.image_proj = nn.Linear(image_dim, proj_dim)
        self.text_proj = nn.Linear(text_dim, proj_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, v_cls, t_cls):
        v = F.normalize(self.image_proj(v_cls), dim=-1)
        t = F.normalize(self.text_proj(t_cls), dim=-1)
        return self.logit_scale.exp().clamp(max=100.0) * v @ t.t()


class RUDHead(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.fc = nn.Linear(hidden_size, 1)

    def forward(self, t_hat):
        return self.fc(t_hat).squeeze(-1)


class MIMHead(nn.Module):
    def __init__(self, embed_dim, patch_size):
        super().__init__()
        self.patch_size = patch_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.fc = nn.Linear(embed_dim, 3 * patch_size * patch_size)

    def forward(self, patch_feats):
        return self.fc(patch_feats)

    def targets(self, image):
        """(B,3,S,S) -> (B,N,3p^2) pixels per patch, patches row-major as the ViT's patch embedding orders them."""
        p = self.patch_size
        b = image.shape[0]
        return image.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, 3 * p * p)


class MeterPretrainer(nn.Module):
    """CIEC backbone (ViT + RoBERTa + CFA) with METER's ``mlm_score`` and ``itm_score`` (and, with ``itc_dim``,
    ALBEF's contrastive ``itc_score``, and with ``rud`` the replaced-unit detector ``rud_score``); see the module
    doc."""

    def __init__(self, backbone, vocab_size, itc_dim=None, rud=False, mim=False):
        super().__init__()
        hidden = backbone.cfa.token_type_embeddings.embedding_dim
        self.backbone = backbone
        self.mlm_score = MLMHead(hidden, vocab_size)
        self.itm_score = ITMHead(hidden)
        self.mlm_score.apply(init_meter_weights)
        self.itm_score.apply(init_meter_weights)
        self.itc_score = None
        if itc_dim:
            text_dim = backbone.text_transformer.config.hidden_size
            self.itc_score = ITCHead(backbone.vit_model.embed_dim, text_dim, itc_dim)
        self.rud_score = RUDHead(hidden).apply(init_meter_weights) if rud else None
        vit = backbone.vit_model
        self.mim_score = MIMHead(vit.embed_dim, vit.patch_embed.patch_size[0]) if mim else None

    def forward(self, batch):
        image_feats = self.backbone.encode_image(batch["image"])
        b = image_feats.shape[0]
        mask = batch["attention_mask"]
        explicit = "itm_ids" in batch  # the ITM captions given as tokens (one-word negatives)
        ids = [batch["mlm_ids"], batch["input_ids"]] + ([batch["itm_ids"]] if explicit else [])
        masks = [mask, mask] + ([batch["itm_mask"]] if explicit else [])
        text = self.backbone.encode_text(torch.cat(ids), torch.cat(masks))
        if explicit:
            itm_feats, itm_mask = text[2 * b:], batch["itm_mask"]
        else:
            itm_feats, itm_mask = text[b:][batch["itm_text"]], mask[batch["itm_text"]]
        fused = self.backbone.cfa(torch.cat([image_feats, image_feats]), torch.cat([text[:b], itm_feats]),
                                  text_mask=torch.cat([mask, itm_mask]))
        masked = batch["mlm_labels"] != -100
        out = {"mlm_logits": self.mlm_score(fused["t_hat"][:b][masked]).float(),
               "mlm_labels": batch["mlm_labels"][masked],
               "itm_logits": self.itm_score(fused["t_cls"][b:], fused["v_cls"][b:]).float()}
        if self.itc_score is not None:
            out["itc_logits"] = self.itc_score(image_feats[:, 0], text[b:2 * b, 0]).float()
        if self.rud_score is not None:
            out["rud_logits"] = self.rud_score(fused["t_hat"][b:]).float()
        if self.mim_score is not None and "mim_mask" in batch:
            masked_patches = batch["mim_mask"]
            feats = self.backbone.encode_image(batch["image"], masked_patches, self.mim_score.mask_token)
            out["mim_pred"] = self.mim_score(feats[:, 1:][masked_patches]).float()
            out["mim_target"] = self.mim_score.targets(batch["image"])[masked_patches].float()
        return out

    def mlm_logits(self, image, mlm_ids, attention_mask, mlm_labels):
        """MLM only (validation): (M,V) logits at the masked positions of ``mlm_labels``, image rows as given."""
        feats = self.backbone(image, mlm_ids, attention_mask)
        return self.mlm_score(feats["t_hat"][mlm_labels != -100]).float()

