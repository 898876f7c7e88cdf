"""The controlled study (benchmarks/study): its world, its measures, and one end-to-end run of
its quick configuration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

world = pytest.importorskip("benchmarks.study.world")
methods = pytest.importorskip("benchmarks.study.methods")


def test_splits_are_reproducible_and_seed_dependent():
    a = world.detection_split(20, 20, "upconv", 0.7, seed=3)
    b = world.detection_split(20, 20, "upconv", 0.7, seed=3)
    c = world.detection_split(20, 20, "upconv", 0.7, seed=4)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (40, 3, world.SIZE, world.SIZE)
    assert float(a.images.min()) >= 0 and float(a.images.max()) <= 1
    assert int(a.labels.sum()) == 20


def test_shortcut_rate_in_training_and_absent_from_tests():
    train = world.detection_split(600, 600, "upconv", 0.7, seed=0)
    test = world.detection_split(600, 600, "spectral", 0.5, seed=1)
    agree = lambda s: float((s.warm.long() == s.labels).float().mean())  # noqa: E731
    assert abs(agree(train) - 0.7) < 0.04
    assert abs(agree(test) - 0.5) < 0.04


def test_captions_describe_the_scene_content():
    rng = np.random.default_rng(0)
    for scene in world.sample_scenes(50, rng):
        cap = scene.caption()
        assert cap.startswith("a photo of ") and scene.background in cap
        for o in scene.objects:
            assert o.shape in cap and o.colour in cap and o.position in cap
            assert o.colour in (world.WARM if scene.warm else world.COOL)


@pytest.mark.parametrize("family", world.FAMILIES)
def test_each_family_leaves_a_trace_the_camera_does_not(family):
    rng = np.random.default_rng(1)
    hi = world.render_all(world.sample_scenes(8, rng))
    gen = torch.Generator().manual_seed(0)
    fake = world.generate(hi, family, gen)
    clean = world._down(hi)
    assert fake.shape == clean.shape
    # the fingerprint is small next to the image but clearly present
    diff = (fake - clean).abs().mean()
    assert 0.003 < float(diff) < 0.1


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown generator family 'vae'"):
        world.generate(torch.zeros(1, 3, world.HI, world.HI), "vae", torch.Generator())


def test_pretraining_pairs_show_one_scene_in_two_looks():
    images, captions = world.pretraining_set(8, seed=0)
    assert images.shape == (8, 3, world.SIZE, world.SIZE)
    for i in range(0, 8, 2):
        a, b = captions[i], captions[i + 1]
        assert a != b
        assert a.split(" of ", 1)[1] == b.split(" of ", 1)[1]  # same content, other look
    with pytest.raises(ValueError, match="even"):
        world.pretraining_set(3, seed=0)


def test_linear_cka_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert methods.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    # invariant to rotations and isotropic scaling of either side
    assert methods.linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-9)
    y = torch.randn(200, 16, generator=g)
    assert methods.linear_cka(x, y) < 0.3
    assert methods.linear_cka(x, y) == pytest.approx(methods.linear_cka(y, x), abs=1e-12)


def test_quick_study_end_to_end(tmp_path):
    """The whole pipeline in its quick configuration: prior, every method on two seeds, the
    table, the figures; a second run reuses the prior's saved weights."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    from benchmarks.study.__main__ import main

    out = tmp_path / "study"
    assert main(["--quick", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["quick"] is True and list(res["seeds"]) == ["0", "1"]
    for seed in res["seeds"].values():
        assert set(seed) == set(methods.METHODS)
        for row in seed.values():
            assert set(row["families"]) == set(world.FAMILIES)
            for m in row["families"].values():
                assert 0.0 <= m["acc"] <= 1.0 and 0.0 <= m["ap"] <= 1.0
            assert -1e-9 <= row["cka"] <= 1 + 1e-9
    # what the projection removed is recorded for exactly the methods that project
    projecting = {m for m, row in res["seeds"]["0"].items() if "surgery" in row}
    assert projecting == {"dgs", "dgs_no_pa", "dgs_inv", "os_random", "dgs_fd"}
    for m in projecting:
        assert -1.0 < res["seeds"]["0"][m]["surgery"]["removed_fraction"] < 1.0
    # the frozen probe's features are the teacher's: CKA exactly 1
    assert res["seeds"]["0"]["probe"]["cka"] == pytest.approx(1.0, abs=1e-9)
    table = (out / "table.md").read_text()
    for m in methods.METHODS:
        assert methods.LABELS[m] in table
    assert " ± " in table
    for png in ("per_family_accuracy.png", "cka.png", "tsne.png", "world.png"):
        assert (out / png).stat().st_size > 1000
    assert "Paired against plain LoRA" in table and "nan" not in table
    # the table and figures can be rewritten from results.json alone, identically
    (out / "table.md").unlink()
    (out / "tsne.png").unlink()
    assert main(["--out", str(out), "--report-only"]) == 0
    assert (out / "table.md").read_text() == table
    assert (out / "tsne.png").stat().st_size > 1000
    # a second run reuses the saved prior; one seed gives means without a spread
    first = (out / "prior" / "prior.safetensors").read_bytes()
    assert main(["--quick", "--out", str(out), "--seeds", "0", "--no-plots"]) == 0
    assert (out / "prior" / "prior.safetensors").read_bytes() == first
    assert "prior: loaded" in (out / "log.txt").read_text()
    one = (out / "table.md").read_text()
    assert "nan" not in one and " ± " not in one.split("\n", 1)[1]


def test_report_only_without_results_is_a_clear_error(tmp_path, capsys):
    from benchmarks.study.__main__ import main

    assert main(["--out", str(tmp_path), "--report-only"]) == 2
    assert "results.json" in capsys.readouterr().err


# -- the grid (every family in turn as the training family) -----------------------------------
def _without_timings(obj):
    """``obj`` without the wall-clock entries (the only numbers a rerun may change)."""
    if isinstance(obj, dict):
        return {
            k: _without_timings(v)
            for k, v in obj.items()
            if k not in ("seconds", "task_seconds", "jobs", "threads_per_job")
        }
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def test_t_quantile_and_interval():
    gridreport = pytest.importorskip("benchmarks.study.gridreport")
    # textbook values of t(0.975, df)
    for df, want in ((1, 12.7062047), (4, 2.7764451), (24, 2.0638986), (100, 1.9839715)):
        assert gridreport.t_quantile(0.975, df) == pytest.approx(want, abs=1e-6)
    x = [0.1, 0.3, 0.2, 0.6]
    iv = gridreport.t_interval(x)
    half = gridreport.t_quantile(0.975, 3) * np.std(x, ddof=1) / np.sqrt(4)
    assert iv["mean"] == pytest.approx(0.3) and iv["n"] == 4
    assert iv["hi"] - iv["mean"] == pytest.approx(half, rel=1e-12)
    assert iv["mean"] - iv["lo"] == pytest.approx(half, rel=1e-12)
    one = gridreport.t_interval([0.4])
    assert one["lo"] == one["hi"] == one["mean"] == pytest.approx(0.4) and one["sd"] == 0.0
    with pytest.raises(ValueError, match="df must be >= 1"):
        gridreport.t_quantile(0.975, 0)


def test_families_option_is_checked():
    from benchmarks.study.__main__ import main
    from benchmarks.study.grid import parse_families

    assert parse_families("spectral, upconv") == ("upconv", "spectral")  # the study's order
    with pytest.raises(ValueError, match="unknown generator family 'vae'"):
        parse_families("upconv,vae")
    with pytest.raises(ValueError, match="twice"):
        parse_families("upconv,upconv")
    with pytest.raises(ValueError, match="at least one"):
        parse_families(" , ")
    for argv in (["--families", "upconv"], ["--jobs", "2"], ["--grid", "--jobs", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(["--quick", *argv])
        assert exc.value.code == 2


def test_quick_grid_report_and_jobs(tmp_path):
    """The grid in its quick configuration on two training families: the report's structure
    and numbers against the per-seed values, --report-only, and jobs=2 equal to jobs=1 bit
    for bit."""
    pytest.importorskip("matplotlib")
    from benchmarks.study import gridreport
    from benchmarks.study.__main__ import main

    out = tmp_path / "grid"
    fams = ["upconv", "spectral"]
    argv = ["--quick", "--grid", "--families", ",".join(fams), "--out", str(out), "--no-plots"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["grid"] is True and res["train_families"] == fams
    assert res["methods"] == list(methods.METHODS) and res["jobs"] == 1
    assert set(res["runs"]) == set(fams)
    for fam in fams:
        assert list(res["runs"][fam]["seeds"]) == ["0", "1"]
        for rows in res["runs"][fam]["seeds"].values():
            assert set(rows) == set(methods.METHODS)
            for row in rows.values():
                held = [f for f in world.FAMILIES if f != fam]
                # the held-out mean is over the four other families, not the training one
                assert row["heldout_acc"] == pytest.approx(
                    np.mean([row["families"][f]["acc"] for f in held]), abs=1e-12
                )
                assert row["train_family_acc"] == row["families"][fam]["acc"]

    s = json.loads((out / "summary.json").read_text())
    assert s == json.loads(json.dumps(gridreport.summary(res)))
    others = [m for m in methods.METHODS if m != "lora"]
    for key in gridreport.MATRIX:
        # the matrix: every method x every training family, plus the all-runs column
        assert set(s["matrix"][key]) == set(methods.METHODS)
        for m in methods.METHODS:
            assert set(s["matrix"][key][m]) == {*fams, "all"}
            for fam in fams:
                vals = [res["runs"][fam]["seeds"][k][m][key] for k in ("0", "1")]
                cell = s["matrix"][key][m][fam]
                assert cell["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
                assert cell["sd"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
    for key in gridreport.PAIRED:
        assert set(s["paired"][key]) == set(others) == set(s["pooled"][key])
        for m in others:
            every = []
            for fam in fams:
                seeds = res["runs"][fam]["seeds"]
                want = [seeds[k][m][key] - seeds[k]["lora"][key] for k in ("0", "1")]
                got = s["paired"][key][m][fam]
                assert got["diffs"] == pytest.approx(want, abs=1e-15)
                assert got["mean"] == pytest.approx(np.mean(want), abs=1e-12)
                assert got["positive"] == sum(d > 0 for d in want)
                every += want
            runs = s["pooled"][key][m]["runs"]
            fam_iv = s["pooled"][key][m]["families"]
            assert runs["n"] == 4 and fam_iv["n"] == 2
            assert runs["mean"] == pytest.approx(np.mean(every), abs=1e-12)
            assert runs["positive"] == sum(d > 0 for d in every)
            assert fam_iv["mean"] == pytest.approx(runs["mean"], abs=1e-12)  # balanced seeds
            for iv in (runs, fam_iv):
                assert iv["lo"] <= iv["mean"] <= iv["hi"]
            # the t-interval over the runs, as the report states it
            half = gridreport.t_quantile(0.975, 3) * np.std(every, ddof=1) / 2
            assert runs["hi"] - runs["mean"] == pytest.approx(half, abs=1e-12)

    # the further pairs: DGS + FD against FD alone, run by run
    vs = s["versus"]["dgs_fd-lora_fd"]["heldout_acc"]
    for fam in fams:
        seeds = res["runs"][fam]["seeds"]
        want = [
            seeds[k]["dgs_fd"]["heldout_acc"] - seeds[k]["lora_fd"]["heldout_acc"] for k in "01"
        ]
        assert vs["paired"][fam]["diffs"] == pytest.approx(want, abs=1e-15)
    assert vs["pooled"]["runs"]["n"] == 4

    table = (out / "tables.md").read_text()
    assert "Pooled paired difference against plain LoRA" in table and "nan" not in table
    for m in methods.METHODS:
        assert methods.LABELS[m] in table
    # one row per method in every matrix: the header, the rule and the rows
    first = table.split("**Held-out accuracy**", 1)[1].split("\n\n")[1].splitlines()
    assert len(first) == 2 + len(methods.METHODS)
    assert all(r.count("|") == len(fams) + 3 for r in first)
    families_md = (out / "families.md").read_text()
    assert all(f"Training family `{f}`" in families_md for f in fams)
    assert "upconv (train)" in families_md and "spectral (train)" in families_md

    # the tables and the figures from results.json alone
    (out / "tables.md").unlink()
    assert main(["--out", str(out), "--report-only"]) == 0
    assert (out / "tables.md").read_text() == table
    for png in ("grid_heatmap.png", "grid_pooled.png"):
        assert (out / png).stat().st_size > 1000

    # two worker processes give the same numbers, bit for bit (the prior is reused)
    out2 = tmp_path / "grid2"
    argv = ["--quick", "--grid", "--families", "spectral", "--jobs", "2", "--no-plots"]
    assert main([*argv, "--out", str(out2), "--prior", str(out / "prior")]) == 0
    res2 = json.loads((out2 / "results.json").read_text())
    assert res2["jobs"] == 2 and "prior: loaded" in (out2 / "log.txt").read_text()
    same = _without_timings(res["runs"]["spectral"])
    assert _without_timings(res2["runs"]["spectral"]) == same
