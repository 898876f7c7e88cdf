"""dgsnet quickstart: DGS-Net fine-tuning in your own training loop, on CPU, in about a minute.

The quickstart is the demo that ships inside the package, so that it also runs where dgsnet was
installed from a wheel: this file is the same as ``python -m dgsnet.demo`` (same options, same
output). Read the loop in ``dgsnet/demo.py`` (``dgsnet.demo.run``): a tiny random open_clip
model, synthetic real/fake images with label-correlated captions, stage 1 (teacher probe) and
stage 2 (LoRA + heads with the gradient surgery) in a plain PyTorch loop.
"""

from __future__ import annotations

from dgsnet.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
