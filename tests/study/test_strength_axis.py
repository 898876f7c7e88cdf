"""The study's shortcut-strength axis (benchmarks/study/strength.py, strengthreport.py) in its
quick configuration, the semantic-suppression method, WiSE-FT, and the record of projected
directions as the study writes it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

methods = pytest.importorskip("benchmarks.study.methods")
strength = pytest.importorskip("benchmarks.study.strength")


def _strip(obj):
    """``obj`` without wall-clock entries and the direction record (absent from old rows)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k != "seconds" and not k.startswith("dir_")}
    return obj


@pytest.mark.slow
def test_quick_strength_axis(tmp_path):
    """Two strengths, every method of the axis: the results' structure, the paired numbers
    against the per-seed values, the direction record, --report-only, and the cells at 0.7
    equal to the grid's cells of the same family bit for bit."""
    pytest.importorskip("matplotlib")
    from benchmarks.study import strengthreport
    from benchmarks.study.__main__ import main

    out = tmp_path / "axis"
    argv = ["--quick", "--strength-axis", "--shortcuts", "0.9,0.7", "--out", str(out)]
    assert main([*argv, "--no-plots"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["strength_axis"] is True and res["shortcuts"] == ["0.7", "0.9"]
    assert res["train_family"] == "upconv" and res["methods"] == list(methods.STRENGTH_METHODS)
    assert "shortcut" not in res["protocol"] and res["feature_dim"] == 64
    for s in res["shortcuts"]:
        for rows in res["runs"][s]["seeds"].values():
            assert set(rows) == set(methods.STRENGTH_METHODS)
            # the projecting methods carry the direction record
            assert {m for m, r in rows.items() if "surgery" in r} == {
                "dgs",
                "dgs_no_pa",
                "sem",
                "sem_pos",
            }
            for m in ("dgs", "dgs_no_pa"):
                d = rows[m]["surgery"]
                # the fixed-direction property: one direction per label and step
                assert d["dir_min_cos_same_label_same_step"] > 1 - 1e-6
                assert abs(d["dir_cos_other_label"]) < 1e-3
            sem = rows["sem"]["surgery"]
            assert sem["dir_cos_same_label_same_step"] < 1 - 1e-3  # one direction per image
            # the share along the projected direction is the share along the own caption (or
            # its positive part); both are float32 cosines computed from differently rounded
            # vectors (the direction is the normalised text feature), so they agree to float32
            # rounding, not to the last bit (1.6e-9 apart on the CI machine)
            assert sem["dir_grad_along_direction"] == pytest.approx(
                sem["dir_grad_along_text"], abs=1e-6
            )
            pos = rows["sem_pos"]["surgery"]
            assert pos["dir_grad_along_direction"] == pytest.approx(
                pos["dir_grad_along_text_positive"], abs=1e-6
            )
    # the shortcut strength reaches the training captions: the caption-only classifier
    txt = {
        s: np.mean([v["training distribution"] for v in res["runs"][s]["text_only"].values()])
        for s in res["shortcuts"]
    }
    assert txt["0.9"] > txt["0.7"]

    s = json.loads((out / "summary.json").read_text())
    assert s == json.loads(json.dumps(strengthreport.summary(res)))
    for k in strengthreport.PAIRED:
        for m in [m for m in methods.STRENGTH_METHODS if m != "lora"]:
            for x in res["shortcuts"]:
                seeds = res["runs"][x]["seeds"]
                want = [seeds[i][m][k] - seeds[i]["lora"][k] for i in ("0", "1")]
                got = s["paired"][k][m][x]
                assert got["diffs"] == pytest.approx(want, abs=1e-15)
                assert got["lo"] <= got["mean"] <= got["hi"]
            trend = np.subtract(
                s["paired"][k][m]["0.9"]["diffs"], s["paired"][k][m]["0.7"]["diffs"]
            )
            assert s["trend"][k][m]["mean"] == pytest.approx(float(trend.mean()), abs=1e-12)
    table = (out / "tables.md").read_text()
    for m in methods.STRENGTH_METHODS:
        assert methods.LABELS[m] in table
    assert "fixed-direction property" in table and "nan" not in table
    assert "Shortcut strength 0.9" in (out / "strengths.md").read_text()
    (out / "tables.md").unlink()
    assert main(["--out", str(out), "--report-only"]) == 0
    assert (out / "tables.md").read_text() == table
    assert (out / "strength_axis.png").stat().st_size > 1000

    # the cells at 0.7 are the grid's cells of the same training family, bit for bit
    grid_out = tmp_path / "grid"
    gargv = ["--quick", "--grid", "--families", "upconv", "--methods", "probe,lora,dgs,wise"]
    assert main([*gargv, "--out", str(grid_out), "--no-plots", "--prior", str(out / "prior")]) == 0
    g = json.loads((grid_out / "results.json").read_text())
    assert g["methods"] == ["probe", "lora", "dgs", "wise"]
    for seed, rows in g["runs"]["upconv"]["seeds"].items():
        for m, row in rows.items():
            assert _strip(res["runs"]["0.7"]["seeds"][seed][m]) == _strip(row), (seed, m)
    assert g["runs"]["upconv"]["text_only"] == res["runs"]["0.7"]["text_only"]


def test_options_are_checked():
    from benchmarks.study.__main__ import main

    assert strength.parse_shortcuts("0.9, 0.5") == (0.5, 0.9)
    assert strength.parse_methods("wise,lora") == ("lora", "wise")  # the tables' order
    for bad, msg in (
        ("", "at least one"),
        ("0.5,x", "not a number"),
        ("1.5", "outside"),
        ("0.5,0.50", "twice"),
    ):
        with pytest.raises(ValueError, match=msg):
            strength.parse_shortcuts(bad)
    for bad, msg in (
        ("", "at least one"),
        ("lora,foo", "unknown method 'foo'"),
        ("lora,lora", "twice"),
    ):
        with pytest.raises(ValueError, match=msg):
            strength.parse_methods(bad)
    for argv in (
        ["--shortcuts", "0.5"],
        ["--methods", "lora"],
        ["--grid", "--strength-axis"],
        ["--strength-axis", "--families", "upconv,spectral"],
        ["--strength-axis", "--shortcuts", "2"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(["--quick", *argv])
        assert exc.value.code == 2


def _tiny_trained(seed: int = 0):
    from benchmarks.study import prior, runner

    model = prior.build_model(prior.PriorSpec(**runner.QUICK_PRIOR))
    model.requires_grad_(False)
    dgs = methods.DGSWrapper(model, prior.tokenizer(), methods.reference_config("rslora"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in dgs.named_trainable_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    dgs.eval()
    return methods.Trained(dgs, frozen=False)


def test_wise_ft_interpolates_the_lora_branch():
    from benchmarks.study import world

    base = _tiny_trained()
    images = world.real_only(8, seed=0).images
    full = base.features(images)
    half = methods.wise_ft(base, 0.5)
    # a copy: the fine-tuned detector is unchanged; its B matrices exactly halved
    assert torch.equal(base.features(images), full)
    b = dict(base.dgs.named_trainable_parameters())
    for name, p in half.dgs.named_trainable_parameters():
        assert torch.equal(p, b[name] * 0.5 if "lora_B" in name else b[name]), name
    # alpha = 1 is the fine-tuned model, alpha = 0 the prior (the teacher's features)
    assert torch.equal(methods.wise_ft(base, 1.0).features(images), full)
    zero = methods.wise_ft(base, 0.0).features(images)
    torch.testing.assert_close(zero, base.teacher_features(images), rtol=1e-5, atol=1e-5)
    mid = half.features(images)
    assert not torch.allclose(mid, full) and not torch.allclose(mid, zero)
    with pytest.raises(ValueError, match="frozen probe"):
        methods.wise_ft(methods.Trained(base.dgs, frozen=True))
