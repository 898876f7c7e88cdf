"""sign_split: g = g_pos + g_neg exactly, g_pos >= 0 >= g_neg, disjoint supports."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dgsnet.surgery import sign_split
from dgsnet.testing import assert_sign_split_reconstructs

SURGERY = settings(settings.get_profile("dgsnet-surgery"))

SPECIALS = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, -1e-45, 3e38, -3e38]


@SURGERY
@given(
    data=st.data(),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    with_specials=st.booleans(),
)
def test_reconstructs_on_random_inputs(data, cases, dtype, with_specials):
    g = data.draw(cases(dtypes=(dtype,))).grad
    if with_specials and g.numel():
        flat = g.reshape(-1).clone()
        picks = data.draw(st.lists(st.sampled_from(SPECIALS), min_size=1, max_size=4))
        for i, v in enumerate(picks):
            flat[i % flat.numel()] = v
        g = flat.reshape(g.shape)
    assert_sign_split_reconstructs(g)
    pos, neg = sign_split(g)
    finite = ~torch.isnan(g)
    assert torch.equal(pos[finite], torch.clamp(g, min=0)[finite])
    assert torch.equal(neg[finite], torch.clamp(g, max=0)[finite])


def test_example_and_specials():
    g = torch.tensor([1.5, -2.0, 0.0, -0.0, float("inf"), float("-inf"), float("nan")])
    pos, neg = sign_split(g)
    assert torch.equal(pos[:6], torch.tensor([1.5, 0.0, 0.0, 0.0, float("inf"), 0.0]))
    assert torch.equal(neg[:6], torch.tensor([0.0, -2.0, 0.0, 0.0, 0.0, float("-inf")]))
    # NaN stays NaN in both parts, so the sum is NaN again
    assert torch.isnan(pos[6]) and torch.isnan(neg[6])
    assert_sign_split_reconstructs(g)


@pytest.mark.parametrize("shape", [(7,), (1, 7), (3, 7), (2, 3, 7), (0, 7)])
def test_shapes_and_dtypes_are_kept(shape):
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        g = torch.randn(shape).to(dtype)
        pos, neg = sign_split(g)
        assert pos.shape == neg.shape == g.shape
        assert pos.dtype == neg.dtype == dtype
        assert_sign_split_reconstructs(g)


def test_does_not_modify_or_alias_input():
    g = torch.randn(4, 5)
    before = g.clone()
    pos, neg = sign_split(g)
    assert torch.equal(g, before)
    pos.add_(1.0)
    neg.sub_(1.0)
    assert torch.equal(g, before)


def test_is_differentiable():
    g = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    pos, neg = sign_split(g)
    (pos.sum() + 2 * neg.sum()).backward()
    expected = torch.where(g.detach() > 0, 1.0, 2.0).to(torch.float64)
    assert torch.equal(g.grad, expected)


@pytest.mark.parametrize("bad", [[1.0, -1.0], 3.0, None, "g"])
def test_rejects_non_tensors(bad):
    with pytest.raises(TypeError, match="torch.Tensor"):
        sign_split(bad)
