"""Bad input to the `dgsnet` command line: wrong commands, options, config files and numeric
values exit with status 2 and one `dgsnet: error:` line, never a traceback."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.bad_input import PROFILE

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(argv):
    cli = pytest.importorskip("dgsnet.cli")
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, err.getvalue()


def _assert_usage_error(argv):
    code, err = _cli(argv)
    assert code == 2, (argv, code, err)
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and errors[0].startswith("dgsnet"), err
    assert "Traceback" not in err


MISSING = "/nonexistent/dgsnet-data"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["train", "--out", "/tmp/x"],
        ["train", MISSING, "--out", "/tmp/x"],
        ["train", MISSING, "--batch-size", "abc", "--out", "/tmp/x"],
        ["train", MISSING, "--batch-size", "0", "--out", "/tmp/x", "--model", "tiny"],
        ["train", MISSING, "--lr", "nan", "--out", "/tmp/x", "--model", "tiny"],
        ["train", MISSING, "--lr", "-1", "--out", "/tmp/x", "--model", "tiny"],
        ["train", MISSING, "--align-weight", "-1", "--out", "/tmp/x", "--model", "tiny"],
        ["train", MISSING, "--lora-rank", "0", "--out", "/tmp/x", "--model", "tiny"],
        ["train", "--config", "/nonexistent.json", "--out", "/tmp/x"],
        ["eval", "/nonexistent-ckpt", MISSING],
        ["eval", "/nonexistent-ckpt", MISSING, "--jpeg-quality", "500"],
        ["predict", "/nonexistent-ckpt", "/nonexistent.png"],
        ["caption", MISSING, "--template", ""],
    ],
    ids=lambda a: " ".join(a)[:40] or "no-args",
)
def test_cli_bad_input_exits_2_with_one_error_line(argv):
    _assert_usage_error(argv)


@pytest.mark.parametrize(
    "content", ["{not json", "[1]", '{"no_such_option": 1}', '{"batch_size": "x"}']
)
def test_cli_bad_config_file(tmp_path, content):
    path = tmp_path / "recipe.json"
    path.write_text(content)
    _assert_usage_error(["train", "--config", str(path), "--out", str(tmp_path / "out")])


@PROFILE
@given(
    option=st.sampled_from(
        [
            "--batch-size",
            "--epochs",
            "--stage1-epochs",
            "--lr",
            "--workers",
            "--seed",
            "--lora-rank",
            "--lora-dropout",
            "--align-weight",
        ]
    ),
    value=st.one_of(
        st.text(max_size=6),
        st.integers(-5, 5).map(str),
        st.sampled_from(["nan", "inf", "-inf", "1e400", "0", "-0.0", "1.5"]),
    ),
)
def test_cli_numeric_options_never_crash(option, value):
    """Any value: exit 2 with one error line (the data root does not exist, so a valid value
    stops there, before any model is built)."""
    _assert_usage_error(
        [
            "train",
            MISSING,
            "--out",
            "/tmp/dgsnet-never-written",
            "--model",
            "tiny",
            f"{option}={value}",
        ]
    )
