"""VCTG: Visual-deviation Calibrated Token Grounding, the text branch of CIEC (paper section 2.4).

Implements the coarse Top-K token prediction (2.4.1, eq. 12's y^t_coarse), the intrinsic branch S^it (eq. 13), the
visual support S_raw (eq. 14), the extrinsic branch S^et (eq. 15), the gated fusion S^t (eq. 16) and the S^t-weighted
sentence prediction y^t_fine (2.4.2, eq. 17). The losses live in losses/text_mil.py, losses/asc.py, losses/scc.py.
Choices the paper leaves open are explained in docs/implementation_notes.md (part 2); among them ``conv_tokens``:
the Conv1d of eq. 13 reads all attended positions (``all``, ``<s>`` / ``</s>`` as context) or the word tokens only
(``words``, the literal T-hat_tok); ``coarse_head``: 2.4.1 "projects" T-hat to token scores with a Linear (``linear``)
or with the MLP form of eq. 1 (``mlp``).

Inputs (B batch, L tokens incl. position 0 = ``<s>``, N patches):
    t_hat          (B,L,D)   CFA-aligned text features T-hat
    t_raw          (B,L,Dt)  raw RoBERTa features T ("original features" of eq. 14)
    v_pat_raw      (B,N,Dv)  raw ViT patch features V_pat
    attention_mask (B,L)     1 on ``<s> tokens </s>``, 0 on padding (right padding)
    content_mask   (B,L)     M_c: 1 on content-word tokens, 0 on stop words, specials, padding
    word_tokens    (B,L)     bool, the real word tokens (``batch["word_tokens"]``, ``datasets.text.word_token_mask``):
                             attended positions minus ``<s>`` and ``</s>``
Outputs (dict): t_coarse (B,), s_it / s_raw / s_et (B,L), token_prob (B,L) (the fused token scores S^t of eq. 16,
read as per-token p(fake); 0 off content tokens), t_fine, t_fine_logit (B,), token_pred long (B,L). With
``image_aid=False`` (Table 3 "w/o Image-aid") the visual branch is neither built nor run: no ``s_raw`` / ``s_et``
keys, S^t = S^it, and L_Scc (which reads S_raw) must be off (losses.build_criterion refuses it).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.heads import score_mlp

GATES = ("softmax", "sigmoid")
ZSCORE_TOKENS = ("content", "words")
FINE_POOLS = ("weighted", "length")
CONV_TOKENS = ("all", "words")
COARSE_HEADS = ("linear", "mlp")
TEXT_DECISIONS = ("fine", "coarse")


def topk_masked_mean(scores, mask, k):
    """(B,) mean of the min(k, #valid) largest ``scores`` where ``mask`` is True; 0 for a row with no valid entry."""
    k = min(k, scores.shape[1])
    top = scores.masked_fill(~mask, float("-inf")).topk(k, dim=1).values
    n_valid = mask.sum(dim=1, keepdim=True).clamp(max=k)
    keep = torch.arange(k, device=scores.device).unsqueeze(0) < n_valid
    return torch.where(keep, top, torch.zeros_like(top)).sum(dim=1) / n_valid.squeeze(1).clamp(min=1)


def masked_zscore(x, mask, eps=1e-6):
    """In-sentence z-score of eq. 15 over ``mask`` (population variance); 0 off the mask and for constant rows."""
    m = mask.to(x.dtype)
    n = m.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (x * m).sum(dim=1, keepdim=True) / n
    var = (((x - mean) * m) ** 2).sum(dim=1, keepdim=True) / n
    return (x - mean) * m / torch.sqrt(var + eps)


def token_score_head(dim, form):
    """2.4.1's projection of T-hat to a token anomaly score: (...,D) -> (...,1). ``linear``: Linear(D, 1);
    ``mlp``: the paper's eq. 1 MLP form, Linear(D, 2D) -> LayerNorm -> GELU -> Linear(2D, 1)."""
    return nn.Linear(dim, 1) if form == "linear" else score_mlp(dim)


class VCTG(nn.Module):
    """Text weakly supervised localisation head; see the module docstring for shapes."""

    def __init__(self, dim, dim_t_raw, dim_v_raw, topk=3, kernel_size=3, proj_dim=256, image_aid=True,
                 gate="softmax", gate_tokens_by_text=True, token_threshold=0.5, zscore_tokens="content",
                 fine_pool="weighted", text_decision="fine", conv_tokens="all", coarse_head="linear"):
        super().__init__()
        for name, value, allowed in (("gate", gate, GATES), ("zscore_tokens", zscore_tokens, ZSCORE_TOKENS),
                                     ("fine_pool", fine_pool, FINE_POOLS),
                                     ("text_decision", text_decision, TEXT_DECISIONS),
                                     ("conv_tokens", conv_tokens, CONV_TOKENS),
                                     ("coarse_head", coarse_head, COARSE_HEADS)):
            if value not in allowed:
                raise ValueError(f"model.vctg.{name}: expected one of {allowed}, got {value!r}")
        if kernel_size % 2 != 1:
            raise ValueError(f"model.vctg.kernel_size must be odd (same-length Conv1d), got {kernel_size}")
        self.topk, self.image_aid, self.gate = topk, image_aid, gate
        self.gate_tokens_by_text, self.token_threshold = gate_tokens_by_text, token_threshold
        self.zscore_tokens, self.fine_pool, self.text_decision = zscore_tokens, fine_pool, text_decision
        self.conv_tokens = conv_tokens
        self.coarse_head = token_score_head(dim, coarse_head)     # 2.4.1 token anomaly map
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)  # eq. 13
        self.it_head = nn.Linear(dim, 1)
        self.fine_head = nn.Linear(dim, 1)                        # 2.4.2 sentence prediction
        if image_aid:  # the visual branch (eqs. 14-16); without it nothing reads S_raw, so it is not built
            self.proj_t = nn.Linear(dim_t_raw, proj_dim)          # eq. 14 shared space
            self.proj_v = nn.Linear(dim_v_raw, proj_dim)
            self.eta = nn.Parameter(torch.tensor(1.0))            # eq. 15 scale
            self.beta = nn.Parameter(torch.tensor(0.0))           # eq. 15 centre
            if gate == "softmax":
                self.gate_logits = nn.Parameter(torch.zeros(2))   # eq. 16 [W^it, W^et] = softmax
            else:
                self.gate_head = nn.Linear(dim, 1)                # eq. 16 per-token W^et = sigmoid

    def forward(self, t_hat, t_raw, v_pat_raw, attention_mask, content_mask, word_tokens):
        words = word_tokens.bool()
        content = (content_mask > 0) & words
        t_hat = t_hat * attention_mask.unsqueeze(-1).to(t_hat.dtype)  # padding features never reach the conv
        t_coarse = topk_masked_mean(torch.sigmoid(self.coarse_head(t_hat).squeeze(-1).float()), words, self.topk)
        conv_in = t_hat * words.unsqueeze(-1).to(t_hat.dtype) if self.conv_tokens == "words" else t_hat
        s_it = self.intrinsic(conv_in, content)
        out = {"t_coarse": t_coarse, "s_it": s_it}
        if self.image_aid:
            out["s_raw"] = self.visual_support(t_raw, v_pat_raw, words)
            out["s_et"] = self.extrinsic(out["s_raw"], content, words)
            token_prob = self.fuse(s_it, out["s_et"], t_hat, content)
        else:
            token_prob = s_it
        t_fine_logit = self.fine_logit(t_hat, token_prob, content)
        t_fine = torch.sigmoid(t_fine_logit)
        return {**out, "token_prob": token_prob, "t_fine": t_fine, "t_fine_logit": t_fine_logit,
                "token_pred": self.predict(token_prob, words, t_fine, t_coarse)}

    def intrinsic(self, t_hat, content):
        """Eq. 13: S^it = M_c * sigmoid(Linear(GELU(Conv1d(T-hat)))), (B,L) float32."""
        h = F.gelu(self.conv(t_hat.transpose(1, 2))).transpose(1, 2)
        return torch.sigmoid(self.it_head(h).squeeze(-1).float()) * content.float()

    def visual_support(self, t_raw, v_pat_raw, words):
        """Eq. 14: S_raw = max over patches of cos(P_t T_tok, P_v V_pat), (B,L) float32, 0 off word tokens.

        Computed in float32 with autocast off: the in-sentence z-score of eq. 15 works on small differences.
        """
        with torch.autocast(device_type=t_raw.device.type, enabled=False):
            t = F.normalize(self.proj_t(t_raw.float()), dim=-1)
            v = F.normalize(self.proj_v(v_pat_raw.float()), dim=-1)
            sim = torch.bmm(t, v.transpose(1, 2)).amax(dim=2)
        return sim * words.float()

    def extrinsic(self, s_raw, content, words):
        """Eq. 15: S^et = M_c * sigmoid(eta*beta - eta*z(S_raw)), z over content (or word) tokens of the sentence."""
        stat_mask = content if self.zscore_tokens == "content" else words
        z = masked_zscore(s_raw, stat_mask)
        return torch.sigmoid(self.eta * self.beta - self.eta * z) * content.float()

    def fuse(self, s_it, s_et, t_hat, content):
        """Eq. 16: S^t = W^it S^it + W^et S^et with W^it + W^et = 1 (global softmax or per-token sigmoid gate)."""
        if self.gate == "softmax":
            w = torch.softmax(self.gate_logits.float(), dim=0)
            return w[0] * s_it + w[1] * s_et
        g = torch.sigmoid(self.gate_head(t_hat).squeeze(-1).float())
        return ((1.0 - g) * s_it + g * s_et) * content.float()

    def fine_logit(self, t_hat, token_prob, content):
        """2.4.2: logit of y^t_fine = Linear(sum_i S^t_i T-hat_i / Z); Z = sum_i S^t_i ("weighted") or #content."""
        w = token_prob * content.float()
        z = w.sum(dim=1) if self.fine_pool == "weighted" else content.float().sum(dim=1)
        pooled = torch.einsum("bl,bld->bd", w, t_hat.float()) / z.clamp(min=1e-6).unsqueeze(-1)
        return self.fine_head(pooled.to(t_hat.dtype)).squeeze(-1).float()

    def predict(self, token_prob, words, t_fine, t_coarse):
        """Token 0/1 predictions: S^t > threshold, zeroed where the sentence is judged real (if gated)."""
        pred = (token_prob > self.token_threshold) & words
        if self.gate_tokens_by_text:
            text_fake = (t_fine if self.text_decision == "fine" else t_coarse) > 0.5
            pred = pred & text_fake.unsqueeze(1)
        return pred.long()


def build_vctg(cfg):
    """VCTG from ``cfg["model"]`` (hidden_size, text.hidden_size, vit.embed_dim, vctg.*)."""
    m = cfg["model"]
    v = m["vctg"]
    return VCTG(dim=m["hidden_size"], dim_t_raw=m["text"]["hidden_size"], dim_v_raw=m["vit"]["embed_dim"],
                topk=v["topk"], kernel_size=v["kernel_size"], proj_dim=v["proj_dim"], image_aid=v["image_aid"],
                gate=v["gate"], gate_tokens_by_text=v["gate_tokens_by_text"],
                token_threshold=v["token_threshold"], zscore_tokens=v["zscore_tokens"],
                fine_pool=v["fine_pool"], text_decision=v["text_decision"], conv_tokens=v["conv_tokens"],
                coarse_head=v["coarse_head"])
