"""The model card (`README.md`) uploaded with a detector (`dgsnet push`, `push_to_hub`).

Every statement in the card is read from the uploaded files: the checkpoint's
`dgs_config.json` (settings, LoRA, model description), `dgsnet_model.json` (base model and
preprocessing), `run.json` (training settings and data), `released_import.json` (an imported
released checkpoint) and the `dgsnet eval --json` files. Fields the files do not hold are
said to be not recorded, never guessed. The card has YAML front matter (`license`, `tags`,
`library_name`, `pipeline_tag`, and `base_model` when the base model is a Hub id) as the
Hub reads it. The evaluation section comes rendered from the caller (`dgsnet.model_card`
renders `dgsnet eval --json` tables), so this module needs nothing above the wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["NO_EVALUATION", "model_card"]

_PAPER = "https://arxiv.org/abs/2511.13108"
_METHOD_KEYS = (
    "suppression",
    "alignment",
    "align_weight",
    "order",
    "align_scale",
    "eps",
    "conflict_only",
    "feature_distill",
    "normalize_features",
    "loss",
    "num_classes",
    "teacher",
)
_TRAIN_KEYS = (
    "stage",
    "epochs",
    "stage1_epochs",
    "batch_size",
    "lr",
    "stage1_lr",
    "lr_step",
    "lr_gamma",
    "seed",
    "precision",
    "world_size",
)


def _front_matter(license: str | None, base_model: str | None) -> str:
    lines = [
        "---",
        f"license: {license or 'other'}",
        "library_name: dgsnet",
        "pipeline_tag: image-classification",
        "tags:",
        "- dgsnet",
        "- dgs-net",
        "- clip",
        "- lora",
        "- ai-generated-image-detection",
    ]
    if base_model:
        lines.append(f"base_model: {base_model}")
    lines.append("---")
    return "\n".join(lines)


def _hub_base(spec: str | None) -> str | None:
    """The Hub id of an `hf:` base model (not a local folder), else `None`."""
    if not spec or not spec.startswith("hf:"):
        return None
    name = spec[3:]
    if name.startswith(("/", ".")) or name.count("/") != 1:
        return None
    return name


def _scaling_text(cfg: Mapping[str, Any]) -> str:
    r, alpha = cfg.get("lora_rank"), cfg.get("lora_alpha")
    if not isinstance(r, int) or not isinstance(alpha, (int, float)):
        return "not recorded"
    if cfg.get("lora_scaling") == "rslora":
        return f"rsLoRA, alpha / sqrt(r) = {alpha / r**0.5:.4g}"
    return f"standard, alpha / r = {alpha / r:.4g}"


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    out = ["| setting | value |", "|---|---|"]
    out += [f"| `{k}` | `{v}` |" for k, v in rows]
    return "\n".join(out)


def _base_section(meta: Mapping[str, Any], info: Mapping[str, Any], stored: bool) -> str:
    model = meta.get("model", {})
    spec = info.get("spec")
    lines = ["## Base model", ""]
    if stored:
        lines.append(
            "The CLIP the LoRA was trained on is stored in this repository (`base_model/`, an "
            "open_clip `local-dir` folder), so nothing else is downloaded."
        )
    elif spec:
        lines.append(f"- model spec: `{spec}` (dgsnet's model factory, `dgsnet.models`)")
    else:
        lines.append("- model spec: not recorded (pass `--model SPEC` when loading)")
    for key in ("kind", "model_class", "image_size", "num_blocks", "feature_dim"):
        if model.get(key) is not None:
            lines.append(f"- {key.replace('_', ' ')}: `{model[key]}`")
    transform = info.get("transform")
    if transform:
        lines.append(
            f"- preprocessing: `{transform}`"
            + (
                " (DGS-Net's patch-selection mosaic, ImageNet mean/std)"
                if transform == "patch-selection"
                else " (the base model's own evaluation preprocessing)"
            )
        )
    return "\n".join(lines)


def _method_section(cfg: Mapping[str, Any]) -> str:
    rows = [(k, cfg[k]) for k in _METHOD_KEYS if k in cfg]
    return "\n".join(
        [
            "## Method and settings",
            "",
            f"Fine-tuned with DGS-Net ([Distillation-Guided Gradient Surgery]({_PAPER})): LoRA on "
            "the image encoder, trained with the image head while the gradient reaching the "
            "image features is projected away from the text head's harmful direction (Orthogonal "
            "Suppression) and pulled towards the frozen teacher's beneficial direction (Prior "
            "Alignment).",
            "",
            _table(rows),
            "",
            "All settings: `final/dgs_config.json`.",
        ]
    )


def _lora_section(cfg: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    modules = meta.get("lora_modules") or []
    rows = [
        ("lora_rank", cfg.get("lora_rank")),
        ("lora_alpha", cfg.get("lora_alpha")),
        ("lora_dropout", cfg.get("lora_dropout")),
        ("lora_scaling", cfg.get("lora_scaling")),
        ("lora_targets", cfg.get("lora_targets") or "the encoder's defaults"),
        ("lora_layers", cfg.get("lora_layers") or "all blocks"),
    ]
    return "\n".join(
        [
            "## LoRA",
            "",
            _table(rows),
            "",
            f"Scaling of the low-rank branch: {_scaling_text(cfg)}. Adapted modules: "
            f"{len(modules)}" + (f" (e.g. `{modules[0]}`)." if modules else "."),
        ]
    )


def _data_section(run: Mapping[str, Any] | None, released: Mapping[str, Any] | None) -> str:
    lines = ["## Training data", ""]
    if released is not None:
        lines.append(
            f"Imported with `dgsnet import-released` from a checkpoint released with the "
            f"DGS-Net code (`{released.get('source')}`, sha256 `{released.get('sha256')}`, "
            f"stage {released.get('stage')}, LoRA rank {released.get('rank')}, alpha "
            f"{released.get('alpha')}). The file does not describe its training data; the "
            f"DGS-Net paper ({_PAPER}) does."
        )
    if run is not None:
        opts, training = run.get("options", {}), dict(run.get("training", {}))
        if "epochs" not in training and "epochs" in opts:
            training["epochs"] = opts["epochs"]
        data = run.get("dataset", {})
        roots = opts.get("roots") or []
        lines += [
            f"- training folders: {', '.join(f'`{r}`' for r in roots) or 'not recorded'}"
            + (f" (subsets: {', '.join(opts['subsets'])})" if opts.get("subsets") else ""),
            f"- images: {data.get('num_images', 'not recorded')}"
            + (f" (dataset fingerprint sha256 `{data['sha256']}`)" if data.get("sha256") else ""),
            f"- preset: `{opts.get('preset')}`, transform: `{opts.get('transform')}`, "
            f"flip: `{opts.get('flip')}`",
            "",
            _table([(k, training[k]) for k in _TRAIN_KEYS if k in training]),
            "",
            "All training settings: `run.json` (local paths reduced to folder names).",
        ]
    if run is None and released is None:
        lines.append("Not recorded: the uploaded checkpoint came without its run folder.")
    return "\n".join(lines)


NO_EVALUATION = (
    "## Evaluation\n\nNo evaluation table was uploaded (`dgsnet eval CHECKPOINT ROOT --json "
    "FILE`, then `dgsnet push RUN_DIR ORG/NAME --eval FILE`)."
)
"""The evaluation section of a card without evaluation tables."""


def _usage_section(repo_id: str, exports: Sequence[str], cfg: Mapping[str, Any]) -> str:
    scale = _scaling_text(cfg)
    lines = [
        "## How to use",
        "",
        "### With dgsnet",
        "",
        "```bash",
        "pip install dgsnet",
        f"dgsnet predict hf-hub:{repo_id} photo.jpg        # path,score,label_pred",
        f"dgsnet eval hf-hub:{repo_id} data/test            # acc / r_acc / f_acc / AP",
        f"dgsnet export hf-hub:{repo_id} --format onnx -o detector/",
        "```",
        "",
        "```python",
        "from dgsnet.evaluation import load_trained",
        "",
        f'wrapper, bundle = load_trained("hf-hub:{repo_id}")   # builds the base model too',
        "logits = wrapper.predict(bundle.eval_transform(image)[None])",
        "```",
        "",
        "### Without dgsnet",
        "",
    ]
    for fmt in exports:
        lines.append(
            f"- `exports/{fmt}/`: the detector in the `{fmt}` format; "
            f"`python exports/{fmt}/load_detector.py photo.jpg` prints `path,score` "
            "(its `preprocessing.json` lists the preprocessing)."
        )
    lines += [
        ""
        if exports
        else "No exported artefact was uploaded; `dgsnet export` (above) makes "
        "one (open_clip, hf, peft, onnx, pt2) that runs without dgsnet.",
        "",
        "By hand: `final/dgs_weights.safetensors` holds, for every adapted linear layer of the "
        "image tower, `lora.<module>.lora_A.default.weight` (`A`, r x in) and "
        "`lora.<module>.lora_B.default.weight` (`B`, out x r), and the image head "
        "(`image_head.weight`, `image_head.bias`). The fine-tuned weight is "
        f"`W + s * B @ A` with `s` from the LoRA settings ({scale}); for open_clip the "
        "`q_proj`, `k_proj`, `v_proj` modules are the row blocks `0:D`, `D:2D`, `2D:3D` of "
        "`in_proj_weight`. The score is `sigmoid(image_head(f))` with `f` the image features "
        "(L2-normalised first when `normalize_features` is true), the probability that the "
        "image is AI-generated.",
    ]
    return "\n".join(lines)


def _license_section(license: str | None) -> str:
    if license:
        text = f"The uploaded weights are shared under the `{license}` license."
    else:
        text = (
            "No license was named at upload (`dgsnet push --license`); ask the uploader. "
            "The base model's own license applies to the weights it contributes."
        )
    return f"## License\n\n{text}"


def model_card(
    *,
    repo_id: str,
    meta: Mapping[str, Any],
    model_info: Mapping[str, Any],
    run: Mapping[str, Any] | None = None,
    released: Mapping[str, Any] | None = None,
    evaluation: str = NO_EVALUATION,
    exports: Sequence[str] = (),
    base_stored: bool = False,
    license: str | None = None,
) -> str:
    """The model card text.

    Args:
        repo_id: the repository (`org/name`).
        meta: the checkpoint's `dgs_config.json`.
        model_info: its `dgsnet_model.json` (`{}` when missing).
        run: the run's `run.json`, if any.
        released: `released_import.json`, for an imported released checkpoint.
        evaluation: the evaluation section, rendered (`dgsnet.model_card.eval_section`).
        exports: the export formats uploaded under `exports/`.
        base_stored: whether the base CLIP is uploaded in `base_model/`.
        license: the license of the weights, or `None` (not given).

    Returns:
        Markdown with YAML front matter.
    """
    cfg = meta.get("config", {})
    spec = model_info.get("spec")
    sections = [
        _front_matter(license, _hub_base(spec if isinstance(spec, str) else None)),
        f"# DGS-Net detector: {repo_id}",
        "A detector of AI-generated images: a CLIP image encoder fine-tuned with LoRA and a "
        "linear head, trained (or imported) with dgsnet, a PyTorch library for the DGS-Net "
        "method. It gives each image a score, the probability that it is "
        "AI-generated (fake); the dgsnet tools call an image fake when the score exceeds 0.5.",
        _base_section(meta, model_info, base_stored),
        _method_section(cfg),
        _lora_section(cfg, meta),
        _data_section(run, released),
        evaluation,
        _usage_section(repo_id, exports, cfg),
        _license_section(license),
        f"## Citation\n\nThe method: DGS-Net, arXiv 2511.13108 ({_PAPER}).",
    ]
    return "\n\n".join(sections) + "\n"
