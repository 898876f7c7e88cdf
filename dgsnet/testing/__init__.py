"""Invariant checks for gradient-surgery rules, to call from your own unit tests.

Each `assert_*` function runs a rule (a `SurgeryRule`) on the inputs you
give it, measures how far the result is from one invariant, and raises `AssertionError`
naming the invariant, the worst sample and the deviation (absolute, and relative to the
sample's norm) when the deviation exceeds the tolerance. Misuse of a check itself (a reference
key that is not there, a non-positive scale) raises `ValueError`.

Tolerances are per sample (a sample is one vector over the last dimension):

```text
|actual - expected| <= atol + rtol * scale
```

elementwise, where `scale` is the larger of the sample's L2 norm in the input gradient and
in the expected result (so that a result which cancels to almost nothing is still judged
against the size of what went in). `atol=None` / `rtol=None` pick a default from the
gradient's dtype:

| dtype    | rtol   | atol   |
|----------|--------|--------|
| float64  | 1e-11  | 1e-300 |
| float32  | 1e-5   | 1e-37  |
| float16  | 4e-3   | 1e-7   |
| bfloat16 | 3.2e-2 | 1e-37  |

Low-precision rules compute in float32 and round once on the way out, which the float16 and
bfloat16 defaults allow for (about four units in the last place).

Examples:
    >>> import torch
    >>> from dgsnet.surgery import OrthogonalSuppression
    >>> from dgsnet.testing import assert_idempotent, assert_orthogonal
    >>> g, harm = torch.randn(4, 16, dtype=torch.float64), torch.randn(4, 16, dtype=torch.float64)
    >>> assert_orthogonal(OrthogonalSuppression(eps=0.0), g, {"harm": harm})
    >>> assert_idempotent(OrthogonalSuppression(eps=0.0), g, {"harm": harm})
"""

from __future__ import annotations

from .autograd_checks import (
    assert_fused_matches_eager,
    assert_gradcheck,
    assert_surgery_backward_applies_rule,
)
from .compare import default_tolerances
from .invariants import (
    assert_finite_and_shaped,
    assert_idempotent,
    assert_noop_on_zero_reference,
    assert_orthogonal,
    assert_positively_homogeneous,
    assert_reference_scale_invariant,
    assert_sign_split_reconstructs,
)

__all__ = [
    "assert_finite_and_shaped",
    "assert_orthogonal",
    "assert_idempotent",
    "assert_positively_homogeneous",
    "assert_reference_scale_invariant",
    "assert_sign_split_reconstructs",
    "assert_noop_on_zero_reference",
    "assert_gradcheck",
    "assert_fused_matches_eager",
    "assert_surgery_backward_applies_rule",
    "default_tolerances",
]
