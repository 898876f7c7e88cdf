"""Opt-in fused path: the same rule math compiled with `torch.compile`.

`fuse(rule)` returns a rule that validates exactly like `rule` and computes the same result
(equal to eager within 1e-6), with the rule's element-wise work and per-sample reductions,
and the finiteness check of the references, compiled into few kernels. Where compilation is
unavailable (no compiler toolchain, an unsupported platform or Python), the first call warns
once and the rule runs eagerly from then on.

Examples:
    >>> from dgsnet.surgery import OrthogonalSuppression, fuse
    >>> rule = fuse(OrthogonalSuppression())   # doctest: +SKIP
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .rules import SurgeryRule, check_output, raise_if_nonfinite

__all__ = ["FusedRule", "fuse"]


class FusedRule(SurgeryRule):
    """A `SurgeryRule` whose math runs through `torch.compile`.

    Args:
        rule: the rule to compile (a `FusedRule` is unwrapped first).
        **compile_kwargs: passed to `torch.compile` (default `dynamic=None`: a new batch size
            recompiles once and then generalises).

    Attributes:
        rule: the eager rule.
        compiled: after the first call, whether compilation succeeded; `None` before it.

    Raises:
        TypeError: `rule` is not a `SurgeryRule`.
    """

    rule: SurgeryRule

    def __init__(self, rule: SurgeryRule, **compile_kwargs: Any) -> None:
        if not isinstance(rule, SurgeryRule):
            raise TypeError(f"fuse expects a SurgeryRule, got {type(rule).__name__}")
        if isinstance(rule, FusedRule):
            rule = rule.rule
        self.rule = rule
        """The eager rule this one compiles (its math, its references)."""
        self.refs = rule.refs
        """The names of the references, as the eager rule's."""
        self.compile_kwargs = compile_kwargs
        """Keyword arguments passed to `torch.compile`."""
        self.compiled: bool | None = None
        """`True` once compiled, `False` once compilation failed (the rule then runs eagerly),
        `None` before the first call."""
        self._kernel: Callable[..., tuple[Tensor, tuple[Tensor, ...]]] | None = None

    def __repr__(self) -> str:
        return f"fuse({self.rule!r})"

    def _repr_args(self) -> dict[str, object]:
        return {"rule": self.rule}

    def _eager_kernel(
        self, grad: Tensor, refs: dict[str, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        # Besides the result, max |r| per sample of each reference: finite iff the sample is
        # (max propagates NaN). These are reductions over the rows the rule reads anyway, and
        # the compiler folds them into the rule's own loop over the samples; the caller checks
        # the B maxima. (A global isfinite(r).all() here would cost a second pass over each
        # reference, and combining the flags inside the kernel splits its loop in two on CPU.)
        maxima = tuple(r.abs().amax(dim=-1) for r in refs.values() if r.shape[-1])
        return self.rule.forward(grad, refs), maxima

    def _own_kernel(self) -> Callable[..., tuple[Tensor, tuple[Tensor, ...]]]:
        """`_eager_kernel` bound to this instance, with a code object of its own.

        torch.compile keeps its cache, and its recompile limit (8 by default), per code object.
        Sharing `_eager_kernel`'s code among all instances would make every rule, dtype and
        shape variant in the process count against one limit, after which Dynamo silently runs
        the rule eagerly; a private copy of the code gives each fused rule its own budget.
        """
        func = FusedRule._eager_kernel
        code = func.__code__.replace(co_name=f"fused_{type(self.rule).__name__}_{id(self):x}")
        return types.MethodType(types.FunctionType(code, func.__globals__, code.co_name), self)

    def _run(self, grad: Tensor, refs: dict[str, Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
        if self.compiled is None:
            try:
                kernel = torch.compile(self._own_kernel(), **self.compile_kwargs)
                result = kernel(grad, refs)
            except Exception as exc:  # compilation unavailable: fall back, say so once
                warnings.warn(
                    f"dgsnet: torch.compile is unavailable here ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); {self.rule!r} runs eagerly",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.compiled = False
                self._kernel = self._eager_kernel
                return self._eager_kernel(grad, refs)
            self.compiled = True
            self._kernel = kernel
            return result
        assert self._kernel is not None
        return self._kernel(grad, refs)

    def __call__(self, grad: Tensor, refs: Mapping[str, Tensor] | None = None) -> Tensor:
        refs = {} if refs is None else refs
        prepared, used = self.rule.prepare(grad, refs, check_finite=False)
        out, maxima = self._run(prepared, used)
        check_output(self.rule, out, prepared, "forward(grad, refs) (fused)")
        if maxima:
            finite = torch.isfinite(torch.cat([m.reshape(-1) for m in maxima])).all()
            raise_if_nonfinite(self.rule, used, finite)
        return out if out.dtype == grad.dtype else out.to(grad.dtype)

    def forward(self, grad: Tensor, refs: dict[str, Tensor]) -> Tensor:
        """The eager rule's math, through the compiled kernel."""
        return self._run(grad, refs)[0]


def fuse(rule: SurgeryRule, **compile_kwargs: Any) -> FusedRule:
    """Return `rule` with its math compiled by `torch.compile` (see `FusedRule`).

    Args:
        rule: the rule.
        **compile_kwargs: passed to `torch.compile`.

    Returns:
        A `FusedRule` that validates and computes like `rule`.
    """
    return FusedRule(rule, **compile_kwargs)
