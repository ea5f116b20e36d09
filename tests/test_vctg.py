"""VCTG head (paper section 2.4, eqs. 13-16 and the coarse/fine sentence predictions) on hand-built tensors."""
import copy

import pytest
import torch

from datasets.text import word_token_mask
from losses.asc import asc_loss
from models.vctg import VCTG, build_vctg, masked_zscore, topk_masked_mean
from utils.config import DEFAULTS

D, DT, DV, P = 8, 6, 5, 4

# Row 0: <s> w w w w w </s> ; row 1: <s> w w </s> pad pad pad ; row 2: <s> w </s> pad... (stop word only).
ATTN = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0]])
CONTENT = torch.tensor([[0, 1, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]]).float()


def make_head(**kw):
    torch.manual_seed(0)
    args = dict(dim=D, dim_t_raw=DT, dim_v_raw=DV, topk=2, kernel_size=3, proj_dim=P)
    args.update(kw)
    return VCTG(**args)


def inputs(seed=1, n_patches=3):
    g = torch.Generator().manual_seed(seed)
    b, length = ATTN.shape
    return (torch.randn(b, length, D, generator=g), torch.randn(b, length, DT, generator=g),
            torch.randn(b, n_patches, DV, generator=g), ATTN, CONTENT, word_token_mask(ATTN))


def identity_projections(head):
    """Make proj_t / proj_v select the first P input dims, so S_raw is the cosine of hand-made vectors."""
    with torch.no_grad():
        for lin in (head.proj_t, head.proj_v):
            lin.weight.zero_()
            lin.weight[:, :P] = torch.eye(P)
            lin.bias.zero_()


def test_word_token_mask_excludes_specials_and_padding():
    expected = torch.tensor([[0, 1, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0]]).bool()
    assert torch.equal(word_token_mask(ATTN), expected)


def test_word_token_mask_of_one_sample_is_its_row_of_the_batch():
    for row, attn in enumerate(ATTN):  # the dataset builds it per sample, collate stacks the rows
        assert torch.equal(word_token_mask(attn), word_token_mask(ATTN)[row])


def test_head_reads_the_word_tokens_of_the_batch():
    head = make_head(topk=2)
    t_hat, t_raw, v, attn, content, words = inputs()
    only_first = words.clone()
    only_first[0] = False
    only_first[0, 1] = True  # row 0: token 1 is the only word token
    out, ref = head(t_hat, t_raw, v, attn, content, only_first), head(t_hat, t_raw, v, attn, content, words)
    p = torch.sigmoid(head.coarse_head(t_hat).squeeze(-1))
    assert torch.allclose(out["t_coarse"][0], p[0, 1], atol=1e-6)
    assert not torch.allclose(ref["t_coarse"][0], p[0, 1], atol=1e-6)
    assert torch.equal(out["t_coarse"][1:], ref["t_coarse"][1:])


def test_output_contract_shapes_ranges_and_masks():
    out = make_head()(*inputs())
    b, length = ATTN.shape
    for key in ("s_it", "s_raw", "s_et", "token_prob", "token_pred"):
        assert out[key].shape == (b, length), key
    for key in ("t_coarse", "t_fine", "t_fine_logit"):
        assert out[key].shape == (b,), key
    assert out["token_pred"].dtype == torch.long
    for key, value in out.items():
        assert torch.isfinite(value.float()).all(), key
    for key in ("t_coarse", "t_fine", "token_prob", "s_it", "s_et"):
        assert (out[key] >= 0).all() and (out[key] <= 1).all(), key
    off_content = CONTENT == 0
    assert (out["token_prob"][off_content] == 0).all()
    assert (out["s_raw"][~word_token_mask(ATTN)] == 0).all()


def test_eq13_intrinsic_scores_zero_on_stop_words_and_positive_on_content():
    s_it = make_head()(*inputs())["s_it"]
    assert (s_it[CONTENT == 0] == 0).all()
    assert (s_it[CONTENT == 1] > 0).all()


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_padding_features_do_not_change_any_output(kernel_size):
    head = make_head(kernel_size=kernel_size)           # kernel 5 reaches past </s> into the padding
    t_hat, t_raw, v, attn, content, words = inputs()
    out = head(t_hat, t_raw, v, attn, content, words)
    pad = (attn == 0).unsqueeze(-1)
    out2 = head(t_hat + 100.0 * pad, t_raw + 100.0 * pad, v, attn, content, words)
    for key in out:
        assert torch.allclose(out[key].float(), out2[key].float(), atol=1e-5), key


@pytest.mark.parametrize("conv_tokens", ["all", "words"])
def test_eq13_conv_reads_the_special_tokens_only_when_asked(conv_tokens):
    """``all``: <s> and </s> are context of the first / last word's Conv1d window; ``words``: T-hat_tok only."""
    head = make_head(conv_tokens=conv_tokens)
    t_hat, t_raw, v, attn, content, words = inputs()
    special = (attn.bool() & ~words).unsqueeze(-1)
    out = head(t_hat, t_raw, v, attn, content, words)
    out2 = head(t_hat + 10.0 * special, t_raw, v, attn, content, words)
    changed = ~torch.isclose(out["s_it"], out2["s_it"], atol=1e-6)
    if conv_tokens == "words":
        assert not changed.any()
    else:  # the first and last content word of row 0 sit next to <s> / </s>
        assert changed[0, 1] and changed[0, 5] and not changed[0, 3]
    with pytest.raises(ValueError, match="conv_tokens"):
        make_head(conv_tokens="specials")


def test_2_4_1_coarse_head_forms():
    """``linear``: one Linear(D, 1); ``mlp``: eq. 1's MLP form, Linear(D, 2D) -> LayerNorm -> GELU -> Linear(2D, 1),
    a non-linear function of each token's features; both give t_coarse as the Top-K mean of its token scores."""
    linear, mlp = make_head(), make_head(coarse_head="mlp")
    assert isinstance(linear.coarse_head, torch.nn.Linear)
    assert [type(m).__name__ for m in mlp.coarse_head] == ["Linear", "LayerNorm", "GELU", "Linear"]
    assert mlp.coarse_head[0].out_features == 2 * D and mlp.coarse_head[3].in_features == 2 * D
    t_hat, t_raw, v, attn, content, words = inputs()
    out = mlp(t_hat, t_raw, v, attn, content, words)
    p = torch.sigmoid(mlp.coarse_head(t_hat).squeeze(-1))
    assert torch.allclose(out["t_coarse"], topk_masked_mean(p, words, mlp.topk), atol=1e-6)
    x = torch.randn(5, D)  # not linear: f(2x) - f(0) != 2 (f(x) - f(0))
    f = mlp.coarse_head
    assert not torch.allclose(f(2 * x) - f(0 * x), 2 * (f(x) - f(0 * x)), atol=1e-4)
    with pytest.raises(ValueError, match="coarse_head"):
        make_head(coarse_head="conv")


def test_eq14_s_raw_is_max_cosine_over_patches():
    head = make_head()
    identity_projections(head)
    t_hat, t_raw, _, attn, content, words = inputs()
    v = torch.zeros(3, 3, DV)
    v[:, 0, 0], v[:, 1, 1], v[:, 2, 2] = 1.0, 1.0, 1.0          # patches along e0, e1, e2
    t_raw = torch.zeros_like(t_raw)
    t_raw[0, 1, 0] = 2.0                                         # parallel to patch 0 -> 1
    t_raw[0, 3, 0], t_raw[0, 3, 3] = 1.0, 1.0                    # 45 degrees to patch 0 -> 1/sqrt 2
    t_raw[0, 4, 3] = 1.0                                         # orthogonal to all -> 0
    t_raw[0, 5, 0], t_raw[0, 5, 1] = -1.0, -1.0                  # best is 0 (patch 2), not -0.707
    s_raw = head(t_hat, t_raw, v, attn, content, words)["s_raw"]
    expected = torch.tensor([1.0, 0.0, 2 ** -0.5, 0.0, 0.0])
    assert torch.allclose(s_raw[0, 1:6], expected, atol=1e-5)


def test_eq15_poorly_supported_content_token_scores_highest():
    head = make_head()
    identity_projections(head)
    t_hat, _, _, attn, content, words = inputs()
    v = torch.zeros(3, 2, DV)
    v[:, 0, 0], v[:, 1, 1] = 1.0, 1.0
    t_raw = torch.zeros(3, 7, DT)
    t_raw[:, :, 0], t_raw[:, :, 1] = 1.0, 0.2                   # every token well supported ...
    t_raw[0, 4, 0], t_raw[0, 4, 3] = 0.1, 1.0                   # ... except content token 4 of row 0
    out = head(t_hat, t_raw, v, attn, content, words)
    row = out["s_et"][0]
    assert out["s_raw"][0, 4] == out["s_raw"][0, 1:6].min()
    assert row.argmax().item() == 4
    assert (row[CONTENT[0] == 0] == 0).all()


def test_zscore_is_invariant_to_affine_change_and_masked():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 7, generator=g)
    mask = CONTENT > 0
    z = masked_zscore(x, mask)
    assert torch.allclose(masked_zscore(3.0 * x - 0.7, mask), z, atol=1e-4)
    assert (z[~mask] == 0).all()
    valid = z[0][mask[0]]
    assert torch.allclose(valid.mean(), torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(valid.pow(2).mean(), torch.tensor(1.0), atol=1e-3)


@pytest.mark.parametrize("zscore_tokens", ["content", "words"])
def test_eq15_s_et_is_sigmoid_of_in_sentence_zscore(zscore_tokens):
    head = make_head(zscore_tokens=zscore_tokens)
    with torch.no_grad():
        head.eta.fill_(1.5)
        head.beta.fill_(0.2)
    out = head(*inputs())
    content = CONTENT[0] > 0
    z = 0.2 - torch.logit(out["s_et"][0][content].double()) / 1.5      # invert eq. 15 on row 0
    stat_mask = CONTENT > 0 if zscore_tokens == "content" else word_token_mask(ATTN)
    expected = masked_zscore(out["s_raw"], stat_mask)[0][content]
    assert torch.allclose(z.float(), expected, atol=1e-4)
    if zscore_tokens == "content":                                    # standardised over the content tokens
        assert abs(z.mean().item()) < 1e-4 and abs(z.pow(2).mean().item() - 1) < 1e-3


def test_zscore_with_fewer_than_two_tokens_is_zero_and_has_finite_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]).bool()
    z = masked_zscore(x, mask)
    assert (z[:2] == 0).all()
    z.sum().backward()
    assert torch.isfinite(x.grad).all()
    const = masked_zscore(torch.full((1, 4), 2.5), torch.ones(1, 4).bool())
    assert (const == 0).all()


def test_sentence_without_content_words_is_finite_and_never_fake():
    head = make_head(gate_tokens_by_text=False, token_threshold=0.0)
    out = head(*inputs())
    assert all(torch.isfinite(v.float()).all() for v in out.values())
    assert (out["token_prob"][2] == 0).all() and (out["token_pred"][2] == 0).all()


def test_eq16_image_aid_off_equals_intrinsic_and_has_no_unused_parameters():
    head = make_head(image_aid=False)
    out = head(*inputs())
    assert torch.equal(out["token_prob"], out["s_it"])
    assert "s_et" not in out and "s_raw" not in out  # the visual branch is neither built nor run
    names = {n for n, _ in head.named_parameters()}
    assert not names & {"eta", "beta", "gate_logits", "proj_t.weight", "proj_v.weight"}


def test_eq16_softmax_gate_weights():
    head = make_head(gate="softmax")
    with torch.no_grad():
        head.gate_logits.copy_(torch.tensor([0.0, torch.log(torch.tensor(3.0))]))
    out = head(*inputs())
    assert torch.allclose(out["token_prob"], 0.25 * out["s_it"] + 0.75 * out["s_et"], atol=1e-6)


def test_eq16_sigmoid_gate_is_per_token_convex_combination():
    head = make_head(gate="sigmoid")
    t_hat, *rest = inputs()
    out = head(t_hat, *rest)
    g = torch.sigmoid(head.gate_head(t_hat).squeeze(-1))
    expected = ((1 - g) * out["s_it"] + g * out["s_et"]) * CONTENT
    assert torch.allclose(out["token_prob"], expected, atol=1e-6)


@pytest.mark.parametrize("gate, gate_params", [("softmax", ["gate_logits"]),
                                               ("sigmoid", ["gate_head.weight", "gate_head.bias"])])
def test_gradients_reach_eta_beta_and_gates(gate, gate_params):
    head = make_head(gate=gate)
    with torch.no_grad():
        head.beta.fill_(0.3)                                   # eta * beta has a nonzero gradient in beta
    out = head(*inputs())
    batch = {"y_t": torch.tensor([1.0, 0.0, 1.0]), "word_tokens": word_token_mask(ATTN), "content_mask": CONTENT}
    asc_loss(out, batch, lam=2.0, k2_ratio=0.5, k2_min=1).backward()
    params = dict(head.named_parameters())
    for name in ["eta", "beta"] + gate_params:
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name


def test_topk_masked_mean_of_coarse_prediction():
    scores = torch.tensor([[0.9, 0.2, 0.8, 0.5, 0.95, 0.99], [0.9, 0.4, 0.3, 0.99, 0.0, 0.0]])
    mask = word_token_mask(torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]))
    # row 0 words: 0.2, 0.8, 0.5 -> top-2 mean 0.65 ; row 1 word: 0.4 only -> 0.4
    assert torch.allclose(topk_masked_mean(scores, mask, 2), torch.tensor([0.65, 0.4]))
    assert topk_masked_mean(scores, torch.zeros_like(mask), 2).eq(0).all()


def test_t_coarse_is_topk_mean_of_coarse_token_head():
    head = make_head(topk=2)
    t_hat, *rest = inputs()
    out = head(t_hat, *rest)
    p = torch.sigmoid(head.coarse_head(t_hat).squeeze(-1))
    row0 = p[0, 1:6].topk(2).values.mean()
    assert torch.allclose(out["t_coarse"][0], row0, atol=1e-6)
    assert torch.allclose(out["t_coarse"][2], p[2, 1], atol=1e-6)


def test_t_fine_is_score_weighted_pooling():
    head = make_head(fine_pool="weighted")
    t_hat, *rest = inputs()
    out = head(t_hat, *rest)
    w = out["token_prob"][0]
    pooled = (w.unsqueeze(-1) * t_hat[0]).sum(0) / w.sum()
    assert torch.allclose(out["t_fine_logit"][0], head.fine_head(pooled).squeeze(), atol=1e-5)
    assert torch.allclose(out["t_fine"], torch.sigmoid(out["t_fine_logit"]))


@pytest.mark.parametrize("decision", ["fine", "coarse"])
def test_token_pred_gated_by_text_decision(decision):
    head = make_head(token_threshold=0.3, text_decision=decision)
    sentence_head = head.fine_head if decision == "fine" else head.coarse_head
    for bias, fake in ((-50.0, False), (50.0, True)):
        with torch.no_grad():
            sentence_head.bias.fill_(bias)
        out = head(*inputs())
        above = (out["token_prob"] > 0.3).long()
        assert above.sum() > 0
        assert torch.equal(out["token_pred"], above if fake else torch.zeros_like(above))
    ungated = make_head(token_threshold=0.3, gate_tokens_by_text=False)
    with torch.no_grad():
        ungated.fine_head.bias.fill_(-50.0)
    out = ungated(*inputs())
    assert torch.equal(out["token_pred"], (out["token_prob"] > 0.3).long())


def test_bf16_autocast_keeps_similarity_in_float32():
    head = make_head()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = head(*inputs())
    assert out["s_raw"].dtype == torch.float32 and out["token_prob"].dtype == torch.float32
    assert all(torch.isfinite(v.float()).all() for v in out.values())


def test_build_vctg_reads_config():
    cfg = copy.deepcopy(DEFAULTS)
    cfg["model"]["hidden_size"], cfg["model"]["text"]["hidden_size"], cfg["model"]["vit"]["embed_dim"] = D, DT, DV
    cfg["model"]["vctg"].update(proj_dim=P, gate="sigmoid", topk=1, conv_tokens="words", coarse_head="mlp")
    head = build_vctg(cfg)
    assert isinstance(head.coarse_head, torch.nn.Sequential) and DEFAULTS["model"]["vctg"]["coarse_head"] == "linear"
    assert head.proj_t.in_features == DT and head.proj_v.in_features == DV and head.proj_t.out_features == P
    assert head.conv.in_channels == D and head.topk == 1 and hasattr(head, "gate_head")
    assert head.conv_tokens == "words" and DEFAULTS["model"]["vctg"]["conv_tokens"] == "all"
    cfg["model"]["vctg"]["gate"] = "bogus"
    with pytest.raises(ValueError, match="gate"):
        build_vctg(cfg)
