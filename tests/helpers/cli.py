"""Command-line flags the tests share: a short `dgsnet train` of the tiny model."""

from __future__ import annotations


def tiny_train_flags(
    *,
    model: str | None = "tiny",
    batch_size: int = 4,
    epochs: int | None = 1,
    stage1_epochs: int = 1,
    lr: str | None = "1e-3",
    stage1_lr: str = "1e-2",
    lora_dropout: str | None = "0.1",
    save_every: int | None = None,
) -> list[str]:
    """`dgsnet train` flags for a quick, quiet run without loader workers; a `None` leaves
    the flag out (the command's default then applies)."""
    values = {
        "--model": model,
        "--batch-size": batch_size,
        "--epochs": epochs,
        "--stage1-epochs": stage1_epochs,
        "--lr": lr,
        "--stage1-lr": stage1_lr,
        "--lora-dropout": lora_dropout,
        "--save-every": save_every,
    }
    flags = ["--workers", "0"]
    for flag, value in values.items():
        if value is not None:
            flags += [flag, str(value)]
    return [*flags, "--quiet"]
