"""The model card that `dgsnet push` uploads, with the run's evaluation tables.

The card itself is `dgsnet.wrapper.card.model_card`; this module adds the evaluation section,
rendered from `dgsnet eval --json` files with `dgsnet.metrics.MetricsTable`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .metrics import MetricsTable
from .wrapper import card
from .wrapper.card import NO_EVALUATION

__all__ = ["eval_section", "model_card"]


def eval_section(evals: Mapping[str, Mapping[str, Any]]) -> str:
    """The card's evaluation section: one Markdown table per evaluated root.

    Args:
        evals: `{file name: dgsnet eval --json content}`.

    Returns:
        The section's Markdown.
    """
    if not evals:
        return NO_EVALUATION
    lines = ["## Evaluation", ""]
    for name, data in evals.items():
        for entry in data.get("roots", []):
            table = MetricsTable.from_dict(entry["table"])
            lines += [
                f"### {entry.get('root')} ({data.get('degradation', 'clean')}, threshold "
                f"{data.get('threshold', 0.5)}; `eval/{name}`)",
                "",
                table.to_markdown().rstrip(),
                "",
            ]
    lines.append("Values are percentages: acc, r_acc, f_acc at the threshold, AP.")
    return "\n".join(lines)


def model_card(
    *,
    repo_id: str,
    meta: Mapping[str, Any],
    model_info: Mapping[str, Any],
    run: Mapping[str, Any] | None = None,
    released: Mapping[str, Any] | None = None,
    evals: Mapping[str, Mapping[str, Any]] | None = None,
    exports: Sequence[str] = (),
    base_stored: bool = False,
    license: str | None = None,
) -> str:
    """The model card text, with the evaluation tables of `evals` (see
    `dgsnet.wrapper.card.model_card` for the other arguments).

    Args:
        repo_id: the repository (`org/name`).
        meta: the checkpoint's `dgs_config.json`.
        model_info: its `dgsnet_model.json` (`{}` when missing).
        run: the run's `run.json`, if any.
        released: `released_import.json`, for an imported released checkpoint.
        evals: `{file name: dgsnet eval --json content}`.
        exports: the export formats uploaded under `exports/`.
        base_stored: whether the base CLIP is uploaded in `base_model/`.
        license: the license of the weights, or `None` (not given).

    Returns:
        Markdown with YAML front matter.
    """
    return card.model_card(
        repo_id=repo_id,
        meta=meta,
        model_info=model_info,
        run=run,
        released=released,
        evaluation=eval_section(evals or {}),
        exports=exports,
        base_stored=base_stored,
        license=license,
    )
