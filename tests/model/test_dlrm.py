"""The dot interaction against a slow, obvious reference."""

import torch

from lowprec.graph import DLRMGraph


def interact(z0: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    return DLRMGraph([], [], pooled.shape[1]).interact(z0, pooled)


def interact_reference(z0: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """For every sample: z0, then <f_i, f_j> for i < j over f = [z0, e_1, ..., e_T], row by row."""
    out = []
    for b in range(z0.shape[0]):
        feats = [z0[b]] + [pooled[b, t] for t in range(pooled.shape[1])]
        dots = [torch.dot(feats[i], feats[j]) for i in range(len(feats)) for j in range(i + 1, len(feats))]
        out.append(torch.cat([z0[b], torch.stack(dots)]))
    return torch.stack(out)


def test_interact_equals_reference():
    g = torch.Generator().manual_seed(0)
    for batch, tables, dim in ((5, 3, 4), (3, 26, 16), (1, 1, 8)):
        z0 = torch.randn(batch, dim, generator=g)
        pooled = torch.randn(batch, tables, dim, generator=g)
        got = interact(z0, pooled)
        assert got.shape == (batch, dim + (tables + 1) * tables // 2)
        torch.testing.assert_close(got, interact_reference(z0, pooled), rtol=1e-5, atol=1e-5)


def test_pair_index_first_made_in_inference_mode_still_trains():
    """The pair index is cached; made first under inference_mode it must still serve autograd."""
    z0, pooled = torch.randn(4, 8), torch.randn(4, 12, 8)  # F = 13: no other test uses it
    with torch.inference_mode():
        interact(z0, pooled)
    z0.requires_grad_(True)
    interact(z0, pooled).sum().backward()
    assert z0.grad is not None and torch.isfinite(z0.grad).all()
