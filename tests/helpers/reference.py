"""An independent DGS step to test the wrapper against.

Written from the DGS-Net paper (arXiv 2511.13108) and the training step of the authors'
released code (HorizonTEL/DGS-Net, ``networks/trainer.py``), with plain autograd and a
gradient hook: three BCE losses, the alignment term ``mean_b <f_b, min(g_img_b, 0)>`` weighted
``lam``, and the projection of the image-feature gradient off the positive part of the text
reference gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dgsnet import DGSWrapper
from tests.helpers.models import open_clip_tokenizer


def reference_step(
    w: DGSWrapper,
    teacher_model: Any,
    images: torch.Tensor,
    captions: list[str],
    labels: torch.Tensor,
    lam: float = 0.2,
) -> torch.Tensor:
    """Three BCE losses, L_help = mean_b <f_b, min(g_img_b, 0)>, projection hook on f.

    Runs ``backward`` (the gradients land on ``w``'s parameters) and returns the total loss."""
    y = labels.to(images.dtype).view(-1, 1)
    f = w.encoder.model.encode_image(images)  # student: LoRA on
    with torch.no_grad():
        f_t = teacher_model.encode_image(images)  # deep-copied pre-fine-tuning model
        tok = open_clip_tokenizer()(captions, context_length=w.encoder.context_length)
        t = w.encoder.model.encode_text(tok)
    t_req = t.clone().requires_grad_(True)
    loss_text = F.binary_cross_entropy_with_logits(w.text_head(t_req), y)
    (g_text,) = torch.autograd.grad(loss_text, t_req, retain_graph=True)
    ft_req = f_t.clone().requires_grad_(True)
    loss_teacher = F.binary_cross_entropy_with_logits(w.teacher_head(ft_req), y)
    (g_img,) = torch.autograd.grad(loss_teacher, ft_req)
    g_help = torch.clamp(g_img, max=0)

    def hook(g: torch.Tensor) -> torch.Tensor:
        pos = torch.relu(g_text)
        u = pos / (pos.norm(dim=1, keepdim=True) + 1e-6)
        return g - (g * u).sum(dim=1, keepdim=True) * u

    f.register_hook(hook)
    loss_img = F.binary_cross_entropy_with_logits(w.image_head(f), y)
    loss_help = (f * g_help).sum(dim=1).mean()
    total = loss_img + loss_text + lam * loss_help
    total.backward()
    return total.detach()
