"""The surgery alone, on a CLIP fine-tuning task that is not detection.

Task: fine-tune an image encoder for a 4-way classification while keeping its pre-trained
features useful. Orthogonal Suppression removes, per sample, the gradient component along the
positive part of a "nuisance" classifier's gradient (here: a head that predicts a spurious
attribute, the image's brightness group), and Prior Alignment pulls in the beneficial part of a
frozen copy's gradient. Any feature tensor works: the rules act per sample on the last dimension.

    python examples/surgery_alone.py
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from dgsnet.surgery import (
    Compose,
    GradientSurgery,
    OrthogonalSuppression,
    PriorAlignment,
    SurgeryStats,
)


def main() -> None:
    torch.manual_seed(0)
    n, d, classes = 512, 32, 4
    x = torch.randn(n, 3, 16, 16)
    y = torch.randint(0, classes, (n,))
    x += y.view(-1, 1, 1, 1).float() * 0.15  # the real signal: weak
    nuisance = (x.mean(dim=(1, 2, 3)) > x.mean()).long()  # a spurious attribute

    encoder = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(128, d),
    )
    frozen = copy.deepcopy(encoder).requires_grad_(False)  # the pre-fine-tuning encoder
    head = nn.Linear(d, classes)
    nuisance_head = nn.Linear(d, 2)
    prior_head = nn.Linear(d, classes).requires_grad_(False)
    opt = torch.optim.Adam(
        [*encoder.parameters(), *head.parameters(), *nuisance_head.parameters()], lr=3e-3
    )
    rule = Compose([PriorAlignment(weight=0.2, scale="invariant"), OrthogonalSuppression()])

    for step in range(60):
        idx = torch.randint(0, n, (64,))
        f = encoder(x[idx])
        # reference gradients, computed on detached features
        f_d = f.detach().requires_grad_(True)
        harm = torch.autograd.grad(F.cross_entropy(nuisance_head(f_d), nuisance[idx]), f_d)[0]
        with torch.no_grad():
            f_prior = frozen(x[idx])
        f_p = f_prior.requires_grad_(True)
        help_ = torch.autograd.grad(F.cross_entropy(prior_head(f_p), y[idx]), f_p)[0]

        stats = SurgeryStats()
        f = GradientSurgery.apply(f, rule, {"harm": harm, "help": help_}, stats)
        loss = F.cross_entropy(head(f), y[idx]) + F.cross_entropy(
            nuisance_head(f.detach()), nuisance[idx]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0:
            s = stats.summary()
            print(
                f"step {step:2d} loss {loss.item():.3f} removed {s['removed_fraction']:+.3f} "
                f"cos(task, harm) {s['cos_harm']:+.3f}"
            )
    with torch.no_grad():
        acc = (head(encoder(x)).argmax(-1) == y).float().mean()
    print(f"train accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
