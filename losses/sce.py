"""Spatial Contrast forgery Enhancement L_Sce (CIEC paper section 2.3.4, eq. 11).

For each fake image (y_v = 1) with at least one candidate box, the patches are partitioned by eq. 9 on M*:
P_Fake = {M* >= eps} (the selected box), P_True = {M* < eps} (background). With C the pairwise cosine similarity of
V-hat_pat and d the Euclidean distance between patch centres (in units of the image side), the spatially weighted
similarity is H = C * exp(-d^2 / (2 sigma^2)) (closer pairs carry more weight). Eq. 11:
    pull: ReLU(delta - H_ij) over fake-fake pairs i != j,
    push: ReLU(delta + H_ik) over each fake patch i and its Top-K1 true patches k by H (hard negatives).
Each term is a mean over the pairs of an image, then a mean over the contributing images; L_Sce = pull + push,
a finite 0 (attached to the graph) when there is no such image or pair.

outputs: ``v_patch_feats`` (B,N,D), ``best_mask`` (B,N). batch: ``y_v`` (B,), ``cand_mask`` (B,n).
Returns a float32 scalar.
"""
import math

import torch

from losses.bsc import fake_with_box


def spatial_weight(grid, sigma, device):
    """(N,N) exp(-d^2 / (2 sigma^2)), d between patch centres of a grid x grid map, in image-side units."""
    idx = torch.arange(grid, dtype=torch.float32, device=device)
    ys, xs = torch.meshgrid(idx, idx, indexing="ij")
    pos = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1) / grid
    return torch.exp(-torch.cdist(pos, pos).pow(2) / (2.0 * sigma ** 2))


def per_image_mean(values, mask):
    """Mean over each image's masked entries, then over images with at least one entry: (B,...) -> scalar."""
    m = mask.flatten(1).float()
    count = m.sum(dim=1)
    per_image = (values.flatten(1) * m).sum(dim=1) / count.clamp(min=1.0)
    used = (count > 0).float()
    return (per_image * used).sum() / used.sum().clamp(min=1.0)


def sce_loss(outputs, batch, eps=0.1, delta=0.2, topk=8, sigma=0.25):
    """Eq. 11 margin losses on the spatially weighted similarity H."""
    feats = outputs["v_patch_feats"]
    B, N, _ = feats.shape
    grid = math.isqrt(N)
    assert grid * grid == N, f"sce_loss expects a square patch grid, got N={N}"
    with torch.autocast(device_type=feats.device.type, enabled=False):
        f = torch.nn.functional.normalize(feats.float(), dim=-1)
        H = torch.bmm(f, f.transpose(1, 2)) * spatial_weight(grid, sigma, feats.device)
    selected = fake_with_box(batch).to(feats.device).unsqueeze(1)
    fake = (outputs["best_mask"] >= eps) & selected
    true = (outputs["best_mask"] < eps) & selected
    not_self = ~torch.eye(N, dtype=torch.bool, device=feats.device)
    pull_mask = fake.unsqueeze(2) & fake.unsqueeze(1) & not_self
    pull = per_image_mean(torch.relu(delta - H), pull_mask)
    # hard negatives: indices from a detached copy with non-true columns excluded, values gathered from H
    k = min(topk, N)
    idx = H.detach().masked_fill(~true.unsqueeze(1), float("-inf")).topk(k, dim=2).indices  # (B,N,k)
    push_mask = true.unsqueeze(1).expand(B, N, N).gather(2, idx) & fake.unsqueeze(2)
    push = per_image_mean(torch.relu(delta + H.gather(2, idx)), push_mask)
    return pull + push
