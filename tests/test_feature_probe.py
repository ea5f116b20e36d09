"""scripts/feature_probe.py: the token probes on frozen features tell a linear read-out from a non-linear one."""
import torch

from scripts.feature_probe import pristine_image, probe_report, train_probe


def xor_features(n=400, length=6, dim=8, seed=0):
    """Token features whose label is a XOR of two feature signs: no linear probe can read it, an MLP can."""
    g = torch.Generator().manual_seed(seed)
    t_hat = torch.randn(n, length, dim, generator=g) * 0.1
    a = torch.randint(0, 2, (n, length), generator=g) * 2 - 1
    b = torch.randint(0, 2, (n, length), generator=g) * 2 - 1
    t_hat[..., 0], t_hat[..., 1] = a.float(), b.float()
    label = (a != b).long()
    content = torch.ones(n, length, dtype=torch.bool)
    content[:, -1] = False  # a non-content token: its label must not count
    label[:, -1] = 1
    kind = torch.zeros(n, length, dtype=torch.long)
    kind[:, ::2] = 1
    y_t = (label[:, :-1].sum(1) > 0).float()
    return {"t_hat": t_hat.half(), "label": label, "content": content, "kind": kind, "y_t": y_t,
            "y_v": torch.zeros(n)}


def test_the_mlp_probe_reads_a_non_linear_token_cue_and_the_linear_probe_does_not():
    train, val = xor_features(seed=0), xor_features(seed=1)
    reports = {form: probe_report(train_probe(train, form, steps=400), val, ("even", "odd"))
               for form in ("linear", "mlp")}
    assert reports["mlp"]["even"] > 95 and reports["mlp"]["odd"] > 95
    assert reports["linear"]["even"] < 70 and reports["linear"]["odd"] < 70
    assert set(reports["mlp"]) == {"even", "odd", "sentence"}


def test_probe_report_skips_single_class_sets_and_pristine_image_keeps_real_images():
    feats = xor_features(n=20)
    feats["y_v"][:5] = 1.0
    kept = pristine_image(feats)
    assert kept["t_hat"].shape[0] == 15 and (kept["y_v"] == 0).all()
    kept["label"][kept["content"]] = 0  # no manipulated word left: token AUC undefined
    kept["y_t"][:] = 0.0
    head = train_probe(kept, "linear", steps=2)
    assert probe_report(head, kept, ("all",)) == {"all": None, "sentence": None}
