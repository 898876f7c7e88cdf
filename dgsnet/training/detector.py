"""`TrainedDetector`, what `load_trained` returns, and `Prediction`, its score of one image.

`TrainedDetector` is a named tuple of the wrapper and the base model's bundle, so existing
code that unpacks `wrapper, bundle = load_trained(RUN)` keeps working, with one method for
the common case: `load_trained(RUN).predict_image(path)`, which scores one image as
`dgsnet predict` scores it.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch

from ..models import ModelBundle
from ..wrapper import DGSWrapper
from .monitor import class_probabilities
from .precision import Precision

__all__ = ["Prediction", "TrainedDetector"]


class Prediction(NamedTuple):
    """The prediction for one image (`TrainedDetector.predict_image`)."""

    score: float
    """Binary head: the probability of fake, `sigmoid(logit)`, the `score` column of `dgsnet
    predict`. Multi-class head: the probability of `label`."""
    label: int
    """Binary head: 1 (fake) when `score > threshold`, else 0 (real). Multi-class head: the
    most probable class."""
    probabilities: tuple[float, ...]
    """One probability per class: `(P(real), P(fake))` for a binary head, the softmax of the
    logits otherwise."""


class TrainedDetector(NamedTuple):
    """A trained detector, as `load_trained` returns it. It unpacks as `(wrapper, bundle)`
    and scores single images with `predict_image`.

    Examples:
        ```python
        from dgsnet.training import load_trained

        detector = load_trained("runs/dgs")
        print(detector.predict_image("photo.jpg").score)   # P(fake), as dgsnet predict
        wrapper, bundle = detector                          # the parts
        ```
    """

    wrapper: DGSWrapper
    """The trained wrapper, in eval mode."""
    bundle: ModelBundle
    """The base model's bundle; `bundle.eval_transform` preprocesses images."""

    def predict_image(
        self, image: Any, *, threshold: float = 0.5, precision: str = "fp32"
    ) -> Prediction:
        """Score one image with the student, as `dgsnet predict` scores it.

        A path is read as the command line reads it (`dgsnet.data.load_image`: every pixel
        format mapped to 8-bit RGB, a damaged file refused naming it); a PIL image is
        converted to RGB. Then the checkpoint's evaluation transform, the student's
        forward in eval mode under `precision`, and `class_probabilities`.

        Args:
            image: an image file path or a `PIL.Image.Image`.
            threshold: a binary head predicts fake iff `score > threshold`.
            precision: `"fp32"`, `"tf32"`, `"bf16"` or `"fp16"` (see `predict_scores`).

        Returns:
            The `Prediction`.

        Raises:
            CorruptImageError: the file cannot be read as an image.
            TypeError: `image` is neither a path nor a PIL image.
        """
        from PIL import Image

        from ..data import load_image
        from ..metrics import check_threshold

        t = check_threshold(threshold)
        if isinstance(image, Image.Image):
            img = image.convert("RGB")
        elif isinstance(image, (str, os.PathLike)):
            img = load_image(image)
        else:
            raise TypeError(
                f"predict_image expects an image path or a PIL image, got {type(image).__name__}"
            )
        wrapper = self.wrapper
        policy = Precision.parse(precision, wrapper.device)
        pixels = self.bundle.eval_transform(img).unsqueeze(0).to(wrapper.device)
        was_training = wrapper.training
        wrapper.eval()
        try:
            with torch.no_grad(), policy.activate(), policy.autocast():
                logits = wrapper.predict(pixels)
        finally:
            wrapper.train(was_training)
        probs = class_probabilities(logits)[0].tolist()
        if wrapper.config.num_classes > 1:
            label = max(range(len(probs)), key=probs.__getitem__)
            return Prediction(probs[label], label, tuple(probs))
        return Prediction(probs[1], int(probs[1] > t), tuple(probs))
