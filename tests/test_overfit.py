"""Overfitting check of the whole CIEC model (paper sections 2.2-2.4) on 16 synthetic samples.

A tiny model (configs/debug.yaml sizes) is trained full-batch with its own forward and ``Criterion`` (all nine
losses, paper weights) on 16 samples of the tiny benchmark's train split, read with the EVAL transform (fixed
images), then evaluated in eval mode (I_valid = v_coarse > 0.5, no y_v filter) on the same samples.

Selection (deterministic, in split order): 6 image-manipulated samples with >= 2 candidates, one of which is the
manipulated face (IoU > 0.5 with ``gt_box``); 2 with that face as the only candidate; 2 text-only fakes; 6 real
pairs. Checks: pair AUC == 1 and the losses fell; real images (y_v = 0) get the exact zero box; every
image-manipulated sample is judged manipulated and gets candidate ``best_idx`` as its box; single-candidate ones
are therefore localised (IoU > 0.5).

Known limitation (strict xfail below): among SEVERAL candidates the tiny from-scratch model does not reliably pick
the manipulated face. Every loss reaches its minimum with any box choice on 16 samples (v_coarse is met by
memorised patches anywhere, v_fine / L_Bsc / L_Sce reinforce the current argmax), so the choice is set by the
initial scores and by which patches the model memorises, not by the forgery trace. The box scoring itself is right:
with a patch map equal to the ground-truth box, eqs. 3-4 pick the manipulated face in every case
(``test_oracle_patch_map_selects_manipulated_face``), and when the labels do carry the location (each fake beside
its trace-free twin) the trained model picks the manipulated face: tests/test_weak_localisation.py.
"""
import numpy as np
import pytest
import torch

from datasets.dgm4 import audited_dataset, collate
from datasets.text import tokenizer_for
from models.trps import TRPS, box_soft_masks
from tests.conftest import tiny_opts, train_full_batch
from utils.config import load_config
from utils.metrics import binary_auc, box_iou

STEPS, LR, SEED = 250, 1.0e-3, 0
N_MULTI, N_SINGLE, N_TEXT, N_TOTAL = 6, 2, 2, 16


def matched_candidate(sample):
    """Index of the candidate with IoU > 0.5 to the manipulated face (-1 if none), and the candidate count."""
    n = int(sample["cand_mask"].sum())
    if sample["y_v"] < 0.5 or n == 0:
        return -1, n
    iou = box_iou(sample["cand_boxes"][:n].numpy(), np.repeat(sample["gt_box"][None].numpy(), n, axis=0))
    return (int(iou.argmax()) if iou.max() > 0.5 else -1), n


def select_samples(ds):
    """Indices of the 16 samples described in the module docstring (test data construction only)."""
    picks = {"multi": [], "single": [], "text": [], "real": []}
    quota = {"multi": N_MULTI, "single": N_SINGLE, "text": N_TEXT, "real": N_TOTAL}
    for i in range(len(ds)):
        s = ds[i]
        match, n = matched_candidate(s)
        if s["y_v"] > 0.5:
            kind = None if match < 0 else ("multi" if n > 1 else "single")
        else:
            kind = "text" if s["y_t"] > 0.5 else "real"
        if kind is not None and len(picks[kind]) < quota[kind]:
            picks[kind].append(i)
    chosen = picks["multi"] + picks["single"] + picks["text"]
    chosen += picks["real"][:N_TOTAL - len(chosen)]
    assert len(picks["multi"]) == N_MULTI and len(picks["single"]) == N_SINGLE and len(chosen) == N_TOTAL, picks
    return chosen


@pytest.fixture(scope="module")
def overfit(tiny_benchmark, tmp_path_factory):
    """Train once; return the batch, eval outputs, first / last training loss and per-sample matched candidate."""
    out_dir = tmp_path_factory.mktemp("overfit")
    # the train split read through the "val" slot, so that the eval transform (fixed images) is used
    cfg = load_config("configs/debug.yaml", tiny_opts(tiny_benchmark, out_dir, **{
        "data.val_files": "['metadata/train.json']", "train.lr": LR, "train.weight_decay": 0.0}))
    ds = audited_dataset(cfg, "val", tokenizer_for(cfg))
    assert not ds.train
    batch = collate([ds[i] for i in select_samples(ds)])
    match = torch.tensor([matched_candidate({k: v[i] for k, v in batch.items()})[0] for i in range(N_TOTAL)])
    outputs, losses = train_full_batch(cfg, batch, ds.tokenizer.pad_token_id, STEPS, LR, SEED)
    return {"batch": batch, "out": outputs, "losses": losses, "match": match}


def test_pair_detection_overfits(overfit):
    b, o, losses = overfit["batch"], overfit["out"], overfit["losses"]
    assert 0 < b["y_m"].sum() < N_TOTAL  # both classes present
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    assert binary_auc(b["y_m"].numpy(), o["p_bin"].numpy()) == 1.0


def test_real_images_get_the_zero_box(overfit):
    b, o = overfit["batch"], overfit["out"]
    real = b["y_v"] < 0.5
    assert real.sum() == N_TOTAL - N_MULTI - N_SINGLE and b["cand_mask"][real].any()
    assert (o["v_coarse"][real] < 0.5).all(), o["v_coarse"][real]
    assert torch.equal(o["pred_box"][real], torch.zeros(int(real.sum()), 4))


def test_manipulated_images_get_a_candidate_box(overfit):
    b, o, match = overfit["batch"], overfit["out"], overfit["match"]
    fake = b["y_v"] > 0.5
    assert (match[fake] >= 0).all()
    assert (o["v_coarse"][fake] > 0.5).all(), o["v_coarse"][fake]
    rows = torch.arange(N_TOTAL)
    assert b["cand_mask"][rows, o["best_idx"]][fake].all()
    assert torch.equal(o["pred_box"][fake], b["cand_boxes"][rows, o["best_idx"]][fake])
    single = fake & (b["cand_mask"].sum(1) == 1)
    assert single.sum() == N_SINGLE
    iou = box_iou(o["pred_box"][single].numpy(), b["gt_box"][single].numpy())
    assert (iou > 0.5).all(), iou


@pytest.mark.xfail(strict=True, reason="tiny from-scratch model on 16 samples: the box choice among several "
                                       "candidates is not identified by the losses (see module docstring)")
def test_manipulated_face_chosen_among_candidates(overfit):
    b, o, match = overfit["batch"], overfit["out"], overfit["match"]
    multi = (match >= 0) & (b["cand_mask"].sum(1) > 1)
    assert multi.sum() == N_MULTI
    chosen = o["best_idx"][multi].tolist()
    assert chosen == match[multi].tolist(), f"chosen {chosen}, manipulated face {match[multi].tolist()}"
    iou = box_iou(o["pred_box"][multi].numpy(), b["gt_box"][multi].numpy())
    assert (iou > 0.5).all(), iou


def test_oracle_patch_map_selects_manipulated_face(overfit):
    """TRPS eqs. 3-4 (debug sizes, no text aid) on a patch map of 1 inside the gt box pick the manipulated face."""
    b = overfit["batch"]
    multi = (overfit["match"] >= 0) & (b["cand_mask"].sum(1) > 1)
    grid = b["image"].shape[-1] // 8  # configs/debug.yaml: patch_size 8
    trps = TRPS(dim=8, dim_v_raw=8, dim_t_raw=8, grid=grid, text_aid=False)
    gt = b["gt_box"] * grid
    c = trps.centres
    inside = (((c[None, :, 0] - gt[:, None, 0]).abs() <= gt[:, None, 2] / 2)
              & ((c[None, :, 1] - gt[:, None, 1]).abs() <= gt[:, None, 3] / 2))
    holder = (gt[:, 1].floor().clamp(0, grid - 1) * grid + gt[:, 0].floor().clamp(0, grid - 1)).long()
    inside[torch.arange(N_TOTAL), holder] = True  # tiny faces: at least the patch holding the box centre
    masks = box_soft_masks(b["cand_boxes"], c, grid, trps.tau1)
    s_iv, _, _ = trps.box_scores(masks, inside.float(), None, None, None)
    s_iv = s_iv.masked_fill(~b["cand_mask"], -1.0)
    assert s_iv.argmax(1)[multi].tolist() == overfit["match"][multi].tolist()
