"""DGS in an existing codebase: two worked integrations, as `docs/integrations.md` shows them.

Each test builds a tiny model with the structure of a public detection codebase, adds DGS with
the lines the docs page lists (every `+` line of its diffs appears in this file, which
`test_the_docs_diffs_are_the_code_tested_here` checks), trains a few steps through the
codebase's own loop and evaluates through the codebase's own forward.

* UniversalFakeDetect (github.com/WisconsinAIVision/UniversalFakeDetect): an OpenAI-CLIP
  model with a linear `fc` on the image embedding, `(img, label)` batches, BCE with logits,
  validation accuracy and AP after every epoch with early stopping on the accuracy.
* DeepfakeBench's CLIP detector (github.com/SCLBD/DeepfakeBench,
  `training/detectors/clip_detector.py`): a Hugging Face CLIP backbone, a linear head with two
  logits, dict batches (`image`, `label`), cross-entropy, `forward` returning a dict with
  `cls` and `prob = softmax(cls)[:, 1]`, `get_losses` returning `{"overall": loss}`.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from dgsnet import DGSConfig, DGSWrapper
from tests.helpers import hf_tokenizer, openai_clip_tokenize, tiny_hf_clip, tiny_openai_clip

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]


def toy_data(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images whose label shows in their mean brightness, with paths and captions."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 3, 32, 32, generator=g) * 0.5 + (y.float() * 2 - 1)[:, None, None, None]
    paths = [
        f"/data/train/{'0_real' if int(v) == 0 else '1_fake'}/{i}.png" for i, v in enumerate(y)
    ]
    return x, y, paths


# -- UniversalFakeDetect ---------------------------------------------------------------------
clip = SimpleNamespace(tokenize=openai_clip_tokenize())  # the vendored OpenAI CLIP code
CHANNELS = {"tiny": 16}


class CLIPModel(nn.Module):
    """The codebase's model class: CLIP (OpenAI code) and a linear `fc` on its embedding."""

    def __init__(self, name="tiny", num_classes=1):  # type: ignore[no-untyped-def]
        super().__init__()
        self.model = tiny_openai_clip()  # clip.load(name, device="cpu") in the codebase
        self.fc = nn.Linear(CHANNELS[name], num_classes)
        config = DGSConfig.reference()
        self.dgs = DGSWrapper(self.model, clip.tokenize, config, image_head=self.fc)

    def forward(self, x, return_feature=False):  # type: ignore[no-untyped-def]
        features = self.model.encode_image(x)
        if return_feature:
            return features
        return self.fc(features)


class Trainer:
    """The codebase's trainer: optimiser, BCE, set_input / optimize_parameters."""

    def __init__(self) -> None:
        self.model = CLIPModel()
        torch.nn.init.normal_(self.model.fc.weight.data, 0.0, 0.02)
        self.model.dgs.captions = "a photo"  # or load_captions(file), with paths= below
        params = self.model.dgs.trainable_parameters()
        self.optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999))
        self.loss_fn = nn.BCEWithLogitsLoss()

    def set_input(self, input):  # type: ignore[no-untyped-def]
        self.input = input[0]
        self.label = input[1].float()

    def optimize_parameters(self) -> None:
        self.loss = self.model.dgs(self.input, None, self.label).loss
        self.optimizer.zero_grad()
        self.loss.backward()
        self.optimizer.step()


def validate(model, loader):  # type: ignore[no-untyped-def]
    """The codebase's validation: sigmoid of the model's own output, AP and accuracy at 0.5."""
    from sklearn.metrics import average_precision_score

    with torch.no_grad():
        y_true, y_pred = [], []
        for img, label in loader:
            y_pred.extend(model(img).sigmoid().flatten().tolist())
            y_true.extend(label.flatten().tolist())
    t, p = np.array(y_true), np.array(y_pred)
    return float(average_precision_score(t, p)), float(((p > 0.5) == (t > 0.5)).mean())


def test_universal_fake_detect_pattern():
    pytest.importorskip("sklearn")
    x, y, _ = toy_data()
    data_loader = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 24, 8)]  # (img, label)
    model = Trainer()
    model.model.dgs.fit_teacher_head(data_loader, epochs=3, lr=1e-2)
    best, patience, history = -1.0, 2, []
    for _epoch in range(4):
        for data in data_loader:
            model.set_input(data)
            model.optimize_parameters()
        model.model.eval()
        ap, acc = validate(model.model, data_loader)
        model.model.train()
        history.append(acc)
        if acc > best:  # early stopping on the validation accuracy
            best, patience = acc, 2
        else:
            patience -= 1
            if patience == 0:
                break
    assert torch.isfinite(model.loss)
    model.model.eval()
    with torch.no_grad():  # the codebase's own forward scores with the trained fc and LoRA
        theirs = model.model(x)
    torch.testing.assert_close(theirs, model.model.dgs.predict(x), rtol=0, atol=1e-6)
    assert history[-1] >= 0.9, history  # the toy task is learnt through their loop
    state = model.model.state_dict()  # the codebase's save keeps the trained fc
    assert torch.equal(state["fc.weight"], model.model.fc.weight)


# -- DeepfakeBench ---------------------------------------------------------------------------
def hf_processor():  # type: ignore[no-untyped-def]
    """A `CLIPProcessor` (image processor + tokenizer), as `AutoProcessor` returns one."""
    transformers = pytest.importorskip("transformers")
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return transformers.CLIPProcessor(image_processor=image_processor, tokenizer=hf_tokenizer())


class CLIPDetector(nn.Module):
    """The codebase's detector: a CLIP backbone, a two-logit head, dict batches."""

    def __init__(self, config=None):  # type: ignore[no-untyped-def]
        super().__init__()
        self.backbone = tiny_hf_clip(projection_dim=512)  # CLIPModel.from_pretrained(...)
        self.head = nn.Linear(512, 2)  # on the projected image features (the joint space)
        self.loss_func = nn.CrossEntropyLoss()
        processor = hf_processor()  # AutoProcessor.from_pretrained(...) in the codebase
        dgs_config = DGSConfig(num_classes=2)
        self.dgs = DGSWrapper(self.backbone, processor, dgs_config, image_head=self.head)
        self.dgs.captions = "a photo of a face"

    def features(self, data_dict):  # type: ignore[no-untyped-def]
        return self.backbone.get_image_features(pixel_values=data_dict["image"]).pooler_output

    def classifier(self, features):  # type: ignore[no-untyped-def]
        return self.head(features)

    def get_losses(self, data_dict, pred_dict):  # type: ignore[no-untyped-def]
        if "dgs_loss" in pred_dict:  # the DGS step's loss holds the head's cross-entropy
            return {"overall": pred_dict["dgs_loss"]}
        return {"overall": self.loss_func(pred_dict["cls"], data_dict["label"])}

    def forward(self, data_dict, inference=False):  # type: ignore[no-untyped-def]
        if self.training and not inference:
            out = self.dgs(data_dict["image"], None, data_dict["label"])
            prob = torch.softmax(out.logits, dim=1)[:, 1]
            return {"cls": out.logits, "prob": prob, "dgs_loss": out.loss}
        features = self.features(data_dict)
        pred = self.classifier(features)
        prob = torch.softmax(pred, dim=1)[:, 1]
        return {"cls": pred, "prob": prob, "feat": features}


def test_deepfakebench_pattern():
    pytest.importorskip("transformers")
    x, y, _ = toy_data(seed=1)
    model = CLIPDetector()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # the codebase's optimiser
    loader = [{"image": x[i : i + 8], "label": y[i : i + 8]} for i in range(0, 24, 8)]
    model.dgs.fit_teacher_head(loader, epochs=3, lr=1e-2)
    model.train()
    for _epoch in range(4):
        for data_dict in loader:  # the codebase's train_step
            predictions = model(data_dict)
            losses = model.get_losses(data_dict, predictions)
            optimizer.zero_grad()
            losses["overall"].backward()
            optimizer.step()
    assert torch.isfinite(losses["overall"])
    model.eval()
    with torch.no_grad():
        probs = torch.cat([model(d, inference=True)["prob"] for d in loader])
        logits = model(loader[0], inference=True)["cls"]
    torch.testing.assert_close(logits, model.dgs.predict(x[:8]), rtol=0, atol=1e-6)
    acc = float(((probs > 0.5).long() == y).float().mean())
    assert acc >= 0.9, acc
    # the detector holds the wrapper: one .to()/.double() moves and casts every part
    model.double()
    assert model.dgs.text_head.weight.dtype == torch.float64
    model.dgs.predict(x[:2].double())


def test_the_docs_diffs_are_the_code_tested_here():
    page = (ROOT / "docs" / "integrations.md").read_text()
    diffs = re.findall(r"```diff\n(.*?)```", page, flags=re.S)
    assert len(diffs) == 2
    source = " ".join(Path(__file__).read_text().split())
    for diff in diffs:
        added = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+")]
        changed = [ln for ln in diff.splitlines() if ln[:1] in ("+", "-")]
        assert len(changed) <= 25, f"a diff of {len(changed)} lines"
        for line in added:
            code = line.split("  #")[0].strip()
            if code and "from_pretrained(" not in code:  # weights the tests cannot download
                assert " ".join(code.split()) in source, code
