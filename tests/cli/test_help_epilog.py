"""`dgsnet --help` ends by pointing at what an installed dgsnet has, not at a file of the
checkout."""

from __future__ import annotations

import importlib
import re

import pytest

from dgsnet.cli import build_parser
from dgsnet.cli.app import COMMANDS, EPILOG


def all_help() -> list[str]:
    parser = build_parser()
    texts = [parser.format_help()]
    subparsers = parser._defaults["_subparsers"]  # the command parsers, kept by build_parser
    texts.extend(p.format_help() for p in subparsers.values())
    return texts


def test_help_names_no_file_of_the_checkout():
    for text in all_help():
        assert not re.search(r"\bdocs/[\w./-]+\.md\b", text), text[-400:]


def test_the_modules_the_epilog_names_import():
    modules = re.findall(r"\bdgsnet(?:\.\w+)*", EPILOG)
    assert "dgsnet.training" in modules
    for name in modules:
        importlib.import_module(name)
    assert EPILOG.strip() in build_parser().format_help()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.NAME)
def test_every_command_help_has_examples(command):
    parser = build_parser()._defaults["_subparsers"][command.NAME]
    assert "dgsnet " + command.NAME in parser.format_help()
