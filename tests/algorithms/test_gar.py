"""GAR keeps group membership; the solver stores no permutation and returns codes in original order."""

import pytest
import torch

from dpq.algorithms import gar_permutation, hessian_from_inputs, invert_permutation, relative_output_error, solve
from dpq.config import QuantConfig


@pytest.mark.parametrize("k,g", [(512, 128), (576, 128), (100, 32), (576, -1), (7, 4)])
def test_gar_keeps_groups_contiguous(k, g):
    d = torch.rand(k)
    perm = gar_permutation(d, k, g)
    gs = k if g == -1 else g
    assert sorted(perm.tolist()) == list(range(k))
    groups = (perm // gs).tolist()
    runs = [groups[0]] + [b for a, b in zip(groups, groups[1:]) if a != b]
    assert len(runs) == len(set(runs)) == (k + gs - 1) // gs  # every group visited in one run
    # inside a group diag descends; groups ordered by their max diag, descending
    peaks = []
    for gi in runs:
        cols = perm[perm // gs == gi]
        assert (d[cols][:-1] >= d[cols][1:]).all()
        peaks.append(d[cols].max())
    assert all(a >= b for a, b in zip(peaks, peaks[1:]))


def test_tail_group_can_go_first():
    d = torch.ones(576)
    d[540] = 100.0  # the tail group (512..575) holds the largest diag
    perm = gar_permutation(d, 576, 128)
    assert perm[0] == 540 and set(perm[:64].tolist()) == set(range(512, 576))


def test_invert_permutation():
    perm = torch.randperm(50)
    assert torch.equal(perm[invert_permutation(perm)], torch.arange(50))


@pytest.mark.parametrize("k,g", [(576, 128), (256, 64), (100, 32)])
def test_gar_solver_codes_in_original_order(k, g):
    """With a diagonal H there is no error feedback, so DPQ+GAR must equal RTN code for code:
    any permutation left in the codes or scales would show up."""
    torch.manual_seed(0)
    w = torch.randn(16, k) * 0.05
    h = torch.diag(torch.rand(k) + 0.1)  # distinct diag: GAR shuffles every group
    cfg = QuantConfig.for_method("dpq-gar", group_size=g)
    qw = solve(w, h, cfg)
    rtn = solve(w, None, QuantConfig.for_method("rtn-w4a8", group_size=g))
    assert qw.info["order"] == "gar"
    assert not hasattr(qw, "perm") and not hasattr(qw, "g_idx")
    assert torch.equal(qw.codes, rtn.codes)
    assert torch.equal(qw.scale, rtn.scale) and torch.equal(qw.zero, rtn.zero)
    assert qw.scale.shape == (16, (k + g - 1) // g)


def test_gar_helps_or_matches_on_skewed_inputs():
    torch.manual_seed(0)
    k = 576
    x = torch.randn(2000, k) @ (torch.randn(k, k) * 0.05 + torch.eye(k)) * (torch.rand(k) ** 4 * 10)
    w = torch.randn(64, k) * 0.05
    h = hessian_from_inputs(x)
    e_gar = relative_output_error(w, solve(w, h, QuantConfig.for_method("dpq-gar")), h)
    e_seq = relative_output_error(w, solve(w, h, QuantConfig.for_method("dpq")), h)
    assert e_gar < 1.05 * e_seq
