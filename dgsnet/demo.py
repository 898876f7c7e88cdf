"""The dgsnet demo: DGS-Net fine-tuning in a plain training loop, on CPU, in about a minute.

Run it with `python -m dgsnet.demo` (`--help` lists the options). It needs nothing beyond the
installed package: no weights are downloaded and no data is read.

A tiny randomly initialised open_clip model stands in for CLIP ViT-L/14, and a synthetic
real/fake image set stands in for a real benchmark: "fake" images carry a faint periodic
up-sampling artefact (a checkerboard), "real" ones do not. The captions are made here too and,
as with BLIP captions of real data sets, their content is partly correlated with the label
(fakes are more often "a dog"): the kind of semantic shortcut that DGS-Net's Orthogonal
Suppression keeps out of the image features.

Stage 1 fits the teacher head as a linear probe on the frozen encoder; stage 2 trains LoRA and
the image and text heads with the gradient surgery. For a real run, build the model with

``python
model, _, preprocess = open_clip.create_model_and_transforms("ViT-L-14", pretrained="openai")
tokenizer = open_clip.get_tokenizer("ViT-L-14")
``

Example:
    ``bash
    python -m dgsnet.demo --train 128 --test 64 --epochs 1
    ``
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Iterator, Sequence

import torch

from .progress import progress_bar
from .wrapper import DGSConfig, DGSWrapper

__all__ = [
    "OBJECTS",
    "PLACES",
    "Split",
    "accuracy",
    "batches",
    "build_parser",
    "main",
    "make_images",
    "make_split",
    "run",
    "teacher_accuracy",
]

#: The caption objects; a fake image's caption says "dog" with probability 0.6 + 0.4/8.
OBJECTS = ["cat", "dog", "car", "chair", "horse", "house", "bird", "tree"]
#: The caption places, drawn uniformly.
PLACES = ["on a street", "in a room", "in a field", "near the sea"]

#: One split: images `(N, 3, S, S)`, their captions, labels `(N,)` (0 real, 1 fake).
Split = tuple[torch.Tensor, list[str], torch.Tensor]

_IMAGE_SIZE = 64


def make_images(n: int, fake: bool, size: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth random scenes; fakes also get a faint checkerboard (a transposed-conv artefact).

    Args:
        n: number of images.
        fake: add the checkerboard of amplitude 0.06.
        size: image height and width in pixels (a multiple of 8).
        gen: the random generator that draws the scenes.

    Returns:
        A float tensor of shape `(n, 3, size, size)`.
    """
    low = torch.randn(n, 3, size // 8, size // 8, generator=gen)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.1 * torch.randn(n, 3, size, size, generator=gen)
    if fake:
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        checker = ((yy + xx) % 2).float() * 2 - 1
        x = x + 0.06 * checker
    return x


def make_split(n: int, size: int, seed: int) -> Split:
    """A shuffled split of `n` images, half real and half fake, with captions.

    Args:
        n: number of images (`n // 2` real, the rest fake).
        size: image size in pixels (a multiple of 8).
        seed: seeds both the image generator and the caption draw.

    Returns:
        `(images, captions, labels)` in one random order.
    """
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    half = n // 2
    real, fake = make_images(half, False, size, gen), make_images(n - half, True, size, gen)
    images = torch.cat([real, fake])
    labels = torch.cat([torch.zeros(half), torch.ones(n - half)]).long()
    captions = []
    for label in labels.tolist():
        obj = "dog" if (label == 1 and rng.random() < 0.6) else rng.choice(OBJECTS)
        captions.append(f"a photo of a {obj} {rng.choice(PLACES)}")
    perm = torch.randperm(n, generator=gen)
    return images[perm], [captions[i] for i in perm.tolist()], labels[perm]


def batches(
    images: torch.Tensor,
    captions: list[str],
    labels: torch.Tensor,
    batch_size: int,
    shuffle: bool,
    seed: int,
) -> Iterator[tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]]:
    """Yield `(images, captions, labels, index)` batches, the layout `DGSWrapper` takes.

    Args:
        images: `(N, 3, S, S)` images.
        captions: `N` captions.
        labels: `(N,)` labels.
        batch_size: samples per batch (the last batch may be smaller).
        shuffle: draw a random order from `seed`; otherwise keep the given order.
        seed: seeds the order.

    Yields:
        One batch and the dataset indices of its samples (for the teacher cache).
    """
    order = (
        torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        if shuffle
        else torch.arange(len(labels))
    )
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        yield images[idx], [captions[j] for j in idx.tolist()], labels[idx], idx


def accuracy(dgs: DGSWrapper, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of the student at threshold 0.5 on the sigmoid score (fake iff above).

    Args:
        dgs: the wrapper (set to eval mode for the pass, back to train mode after).
        images: `(N, 3, S, S)` images.
        labels: `(N,)` labels.

    Returns:
        The fraction of correctly classified images.
    """
    dgs.eval()
    with torch.no_grad():
        scores = torch.cat(
            [dgs.predict(images[i : i + 64]).sigmoid().flatten() for i in range(0, len(images), 64)]
        )
    dgs.train()
    return float(((scores > 0.5).long() == labels).float().mean())


def teacher_accuracy(
    dgs: DGSWrapper, images: torch.Tensor, captions: list[str], labels: torch.Tensor
) -> float:
    """Accuracy of the stage-1 teacher probe (frozen encoder + teacher head), logit > 0.

    Args:
        dgs: the wrapper whose teacher head was fitted.
        images: `(N, 3, S, S)` images.
        captions: unused; accepted so that a `Split` can be passed with `*split`.
        labels: `(N,)` labels.

    Returns:
        The fraction of correctly classified images.
    """
    with torch.no_grad():
        z = dgs.teacher_head(dgs.encode_teacher(images)).flatten()
    return float(((z > 0).long() == labels).float().mean())


def _tiny_model() -> torch.nn.Module:
    import open_clip

    return open_clip.CLIP(
        embed_dim=64,
        vision_cfg=dict(image_size=_IMAGE_SIZE, patch_size=8, width=96, layers=4, head_width=32),
        text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=2),
    )


def run(
    *,
    train: int = 384,
    test: int = 256,
    epochs: int = 3,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> float:
    """Run the demo: stage 1 and stage 2 of DGS-Net on the tiny model and synthetic data.

    Args:
        train: number of training images.
        test: number of held-out images.
        epochs: stage-2 epochs.
        batch_size: batch size of both stages.
        lr: stage-2 Adam learning rate.
        seed: seeds the model, the data and the batch order.
        progress: show tqdm progress bars (on stderr).
        echo: where the report lines go.

    Returns:
        The held-out accuracy after stage 2.

    Raises:
        ValueError: a size, count or rate out of range.
    """
    _check_run_args(train=train, test=test, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    torch.manual_seed(seed)
    start = time.perf_counter()

    dgs = _build_wrapper(echo)
    train_split = make_split(train, _IMAGE_SIZE, seed)
    test_split = make_split(test, _IMAGE_SIZE, seed + 1)
    _stage1(
        dgs, train_split, test_split, batch_size=batch_size, seed=seed, progress=progress, echo=echo
    )

    echo("stage 2: LoRA + heads with gradient surgery, in a plain training loop")
    opt = torch.optim.Adam(dgs.trainable_parameters(), lr=lr)
    step = 0
    for epoch in range(epochs):
        step = _stage2_epoch(
            dgs,
            opt,
            list(batches(*train_split, batch_size, True, seed + epoch)),
            desc=f"epoch {epoch + 1}/{epochs}",
            step=step,
            progress=progress,
            echo=echo,
        )
        echo(
            f"  epoch {epoch + 1}: held-out accuracy "
            f"{accuracy(dgs, test_split[0], test_split[2]):.3f}"
        )

    acc = accuracy(dgs, test_split[0], test_split[2])
    echo(
        f"held-out accuracy after DGS fine-tuning: {acc:.3f} "
        f"({test} images, {time.perf_counter() - start:.0f} s in all)"
    )
    return acc


def _check_run_args(
    *, train: int, test: int, epochs: int, batch_size: int, lr: float, seed: int
) -> None:
    """Raise `ValueError` for a count below its minimum or a learning rate that is not > 0."""
    for name, value, low in (
        ("train", train, 2),
        ("test", test, 2),
        ("epochs", epochs, 1),
        ("batch_size", batch_size, 1),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")


def _build_wrapper(echo: Callable[[str], None]) -> DGSWrapper:
    """The tiny model wrapped with the reference configuration; reports its size to `echo`."""
    import open_clip

    model = _tiny_model()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the BPE vocabulary ships with open_clip
    config = DGSConfig.reference(lora_dropout=0.1)  # r=6, alpha=6 on q/k/v, reference surgery
    dgs = DGSWrapper(model, tokenizer, config)
    n_train = sum(p.numel() for p in dgs.trainable_parameters())
    echo(
        f"model: tiny open_clip ViT ({len(dgs.lora_modules)} LoRA modules, {n_train} trainable "
        f"parameters); config: {config.order}, align {config.align_weight} ({config.align_scale})"
    )
    return dgs


def _stage1(
    dgs: DGSWrapper,
    train_split: Split,
    test_split: Split,
    *,
    batch_size: int,
    seed: int,
    progress: bool,
    echo: Callable[[str], None],
) -> None:
    """Stage 1: fit the teacher head as a linear probe; report its loss and both accuracies."""
    echo("stage 1: linear probe of the frozen teacher")
    history = dgs.fit_teacher_head(
        list(batches(*train_split, batch_size, True, seed)), epochs=3, lr=1e-2, progress=progress
    )
    echo(f"  teacher-head loss per epoch: {', '.join(f'{h:.3f}' for h in history)}")
    echo(f"  held-out accuracy of the teacher probe: {teacher_accuracy(dgs, *test_split):.3f}")
    echo(
        f"  held-out accuracy before stage 2 (student): "
        f"{accuracy(dgs, test_split[0], test_split[2]):.3f}"
    )


def _stage2_epoch(
    dgs: DGSWrapper,
    opt: torch.optim.Optimizer,
    epoch_batches: list[tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]],
    *,
    desc: str,
    step: int,
    progress: bool,
    echo: Callable[[str], None],
) -> int:
    """One stage-2 epoch of the plain training loop; every 8th step is reported. Returns the
    step count after the epoch."""
    bar = progress_bar(epoch_batches, desc=desc, enabled=progress)
    # printing through tqdm.write keeps a live bar intact
    write = getattr(bar, "write", print) if echo is print else echo
    for images, captions, labels, index in bar:
        out = dgs(images, captions, labels, index=index)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        step += 1
        s = out.stats
        bar.set_postfix(
            loss=f"{out.loss.item():.3f}",
            removed=f"{s['removed_fraction']:.3f}",
            cos_harm=f"{s['cos_harm']:+.2f}",
        )
        if step % 8 == 0:
            parts = out.losses
            write(
                f"  step {step:3d} loss {out.loss.item():.4f} (image {parts['image']:.3f}, "
                f"text {parts['text']:.3f}, align {parts['align']:+.4f}) | surgery: "
                f"removed {s['removed_fraction']:.3f} of the gradient norm, "
                f"cos(task, harm) {s['cos_harm']:+.3f}, cos(task, help) {s['cos_help']:+.3f}"
            )
    bar.close()
    return step


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the demo's options to `parser` (a new one when `None`) and return it.

    Args:
        parser: an existing parser, e.g. a `dgsnet demo` sub-command's.

    Returns:
        The parser, with `--train`, `--test`, `--epochs`, `--batch-size`, `--lr`, `--seed` and
        `--no-progress`.
    """
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="python -m dgsnet.demo",
            description="DGS-Net fine-tuning of a tiny random CLIP on synthetic real/fake "
            "images, on CPU, in about a minute",
        )
    parser.add_argument("--train", type=_int_at_least(2), default=384, help="training images")
    parser.add_argument("--test", type=_int_at_least(2), default=256, help="held-out images")
    parser.add_argument("--epochs", type=_int_at_least(1), default=3, help="stage-2 epochs")
    parser.add_argument("--batch-size", type=_int_at_least(1), default=16)
    parser.add_argument("--lr", type=_positive_float, default=1e-3, help="stage-2 learning rate")
    parser.add_argument("--seed", type=_int_at_least(0), default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line (`sys.argv[1:]` when `argv` is `None`), run the demo, return 0.

    Args:
        argv: the options, e.g. `["--epochs", "1"]`.

    Returns:
        The exit status, 0.
    """
    args = build_parser().parse_args(argv)
    run(
        train=args.train,
        test=args.test,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=not args.no_progress,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
