"""Every shipped ablation (configs/ablations/*.yaml, Tables 2-3 and the section 3.5 baseline) builds, trains exactly
what it claims to train, and loads a METER-format checkpoint with an exact key report."""
import glob
import os
import re

import pytest
import torch
import yaml

from losses import build_criterion
from models import ONLY_TRAINED_BY, build_model
from models.backbone import build_backbone
from models.meter_export import save_meter_checkpoint
from models.meter_heads import MeterPretrainer
from models.pretrained_load import load_pretrained
from tests.test_ciec import make_batch, tiny_cfg
from utils.config import merge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATIONS = sorted(glob.glob(os.path.join(ROOT, "configs", "ablations", "*.yaml")))
CFA_LAYERS = 2  # the small model of these tests, and the checkpoint "of matching size"


def ablation_cfg(path):
    """The ablation's own overrides (its ``_base_`` is the paper config; output paths are irrelevant here) applied
    to a small config with ``CFA_LAYERS`` co-attention layers."""
    with open(path) as f:
        overrides = yaml.safe_load(f)
    assert overrides.pop("_base_") == "../ciec.yaml", path
    overrides.pop("train", None)
    base = merge(tiny_cfg(), {"model": {"cfa": {"num_layers": CFA_LAYERS}}})
    return merge(base, overrides)


def test_every_table_row_has_a_config():
    names = {os.path.basename(p)[:-5] for p in ABLATIONS}
    assert names == {"baseline", "wo_v_coarse", "wo_v_fine", "wo_bsc", "wo_sce", "wo_text_aid", "wo_t_coarse",
                     "wo_t_fine", "wo_asc", "wo_image_aid", "wo_scc"}


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: os.path.basename(p)[:-5])
def test_ablation_trains_exactly_its_parameters(path):
    """Every trainable parameter gets a gradient from the enabled losses; the frozen ones are exactly those that
    only a switched-off loss would train, and they get none."""
    cfg = ablation_cfg(path)
    torch.manual_seed(0)
    model = build_model(cfg, pad_token_id=1)
    off = [k for k, w in cfg["loss"]["weights"].items() if w == 0]
    prefixes = tuple(p for k in off for p in ONLY_TRAINED_BY.get(k, ()))
    expected = sorted(n for n, _ in model.named_parameters() if prefixes and n.startswith(prefixes))
    assert sorted(model.frozen_by_ablation) == expected
    if "v_fine" in off:
        assert expected, "w/o L^v_Fine must freeze the text-aid projections and alpha"
    batch = make_batch()
    losses = build_criterion(cfg)(model(batch), batch)
    losses["loss"].backward()
    for name, param in model.named_parameters():
        if name in expected:
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.requires_grad and param.grad is not None, f"{name} gets no gradient in {path}"
    assert all(losses[k].item() == 0 for k in off)


def test_image_aid_off_builds_no_visual_branch_and_refuses_scc():
    cfg = ablation_cfg(os.path.join(ROOT, "configs", "ablations", "wo_image_aid.yaml"))
    model = build_model(cfg)
    assert not [n for n, _ in model.named_parameters() if re.match(r"vctg\.(proj_[tv]|eta|beta|gate)", n)]
    out = model(make_batch())
    assert "s_raw" not in out and "s_et" not in out and torch.equal(out["token_prob"], out["s_it"])
    with pytest.raises(ValueError, match="loss.weights.scc must be 0"):
        build_criterion(merge(cfg, {"loss": {"weights": {"scc": 1.0}}}))


@pytest.fixture(scope="module")
def meter_file(tmp_path_factory):
    """A METER-format checkpoint (pretrain.py's export) of the small model with ``CFA_LAYERS`` co-attention layers."""
    torch.manual_seed(1)
    cfg = ablation_cfg(ABLATIONS[0])
    cfg = merge(cfg, {"model": {"cfa": {"num_layers": CFA_LAYERS}}})
    pretrainer = MeterPretrainer(build_backbone(cfg, pad_token_id=1), cfg["model"]["text"]["vocab_size"])
    path = str(tmp_path_factory.mktemp("meter") / "meter.ckpt")
    save_meter_checkpoint(path, pretrainer)
    return path, torch.load(path, weights_only=True)["state_dict"]


def _count(sd, pattern):
    return sum(1 for k in sd if re.fullmatch(pattern, k))


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: os.path.basename(p)[:-5])
def test_ablation_loads_the_meter_checkpoint_with_an_exact_report(path, meter_file):
    ckpt, sd = meter_file
    cfg = ablation_cfg(path)
    model = build_model(cfg)
    report = load_pretrained(model.backbone, {**cfg["pretrained"], "meter": ckpt})["meter"]
    layers = cfg["model"]["cfa"]["num_layers"]
    expected = {"mlm_score": _count(sd, r"mlm_score\..*"), "itm_score": _count(sd, r"itm_score\..*")}
    for side in ("text", "image"):
        beyond = sum(_count(sd, rf"cross_modal_{side}_layers\.{i}\..*") for i in range(layers, CFA_LAYERS))
        if beyond:
            expected[f"cross_modal_{side}_layers beyond cfa.num_layers={layers}"] = beyond
    assert report["left_over"] == dict(sorted(expected.items()))
    assert report["loaded"] == len(model.backbone.state_dict())
    assert report["loaded"] + sum(expected.values()) == len(sd)
    if os.path.basename(path) == "baseline.yaml":
        assert layers == 0 and len(expected) == 4
