r"""The DGS-Net wrapper: `DGSWrapper`, its `DGSConfig` and what it returns.

The step follows the DGS-Net paper (Distillation-Guided Gradient Surgery, arXiv 2511.13108)
and the training step of the authors' released code (HorizonTEL/DGS-Net,
`networks/trainer.py`); `docs/wrapper.md` walks through it. Per batch of `B` images with
captions and labels the wrapper computes:

* student features `f = E_img(x)` (LoRA on), teacher features `f_T` (adapters off, no
  grad), text features `t` (frozen text tower, cached per caption);
* `L_img = loss(h(f'), y)` with
  `f' = GradientSurgery(f, OrthogonalSuppression, harm=g_text)`,
  `L_text = loss(h_t(t), y)`, `L_T = loss(h_T(f_T), y)` (value only),
  `g_text = dL_text/dt` and `g_img = dL_T/df_T` (closed form for linear heads);
* the alignment term `L_align = mean_b <f'_b, min(g_img_b, 0)>`, attached to `f'` so that
  the projection also sees it (the reference order), or to `f` (project first, then align:
  the paper's order). With `align_scale="reference"` the references are the gradients of the
  mean-reduced losses (each carries `1/B`, so the alignment is weighted `lambda/B`, as in
  the released code); with `"invariant"` they are per-sample gradients (no `1/B`), which makes
  the step independent of the batch size, `eps` included;
* `loss = L_img + L_text + align_weight * L_align` (`+ feature_distill * MSE(f, f_T)`
  when feature distillation is on; taken on the raw features `f`, so the projection does
  not act on its gradient).

Realising the alignment as a loss term rather than inside the backward hook gives the same
gradient as `PriorAlignment` and keeps it correct under loss scaling and data parallelism.

The modules of this package: `model` (`DGSWrapper`), `config` (`DGSConfig`), `heads`,
`references`, `terms`, `text`, `teacher`, `caches`, `captions`, `validation`, `stage1`,
`lora`, `checkpoint` and `output`. The older top-level paths (`dgsnet.config`,
`dgsnet.heads`, `dgsnet.lora`, `dgsnet.checkpoint`, ...) re-export the same names.
"""

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME
from .config import DGSConfig
from .model import DGSWrapper
from .output import DGSOutput, SurgeryResult

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "DGSConfig", "DGSOutput", "DGSWrapper", "SurgeryResult"]
