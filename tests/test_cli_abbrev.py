"""Every command-line tool refuses an abbreviated option instead of guessing which one was meant.

argparse accepts any unique prefix of a long option by default (``--smok`` for ``--smoke``); a typo that happens
to be a prefix would then silently set another option. Each parser is built with ``allow_abbrev=False``, and the
full spelling of the same option still parses.
"""
from __future__ import annotations

import pytest

from irra_core import pipeline, search, test as test_cli, train, transfer
from irra_core.data import __main__ as data_cli


def _rejects(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_pipeline_refuses_prefix(capsys):
    parser = pipeline.build_parser()
    assert parser.parse_args(["--data-root", "d"]).data_root == "d"
    assert "unrecognized arguments: --data-ro" in _rejects(parser.parse_args, ["--data-ro", "d"], capsys)


def test_transfer_refuses_prefix(capsys):
    parser = transfer.build_parser()
    assert parser.parse_args(["--smoke"]).smoke is True
    assert "unrecognized arguments: --smok" in _rejects(parser.parse_args, ["--smok"], capsys)


def test_train_refuses_prefix(capsys):
    parser = train.build_parser()
    assert "unrecognized arguments: --confi" in _rejects(parser.parse_args, ["--confi", "x.yaml"], capsys)


@pytest.mark.parametrize("argv, prefix", [
    (["synth", "--ident", "5"], "--ident"),
    (["check", "--dataset", "CUHK-PEDES", "--no-dec"], "--no-dec"),
])
def test_data_cli_refuses_prefix_in_subcommands(argv, prefix, capsys, tmp_path):
    root = str(tmp_path / "set")  # were the prefix accepted, nothing would land in the working directory
    argv = [argv[0], "--root", root, *argv[1:]]
    assert f"unrecognized arguments: {prefix}" in _rejects(data_cli._main, argv, capsys)


def test_test_and_search_refuse_prefix(capsys):
    assert "unrecognized arguments: --checkp" in _rejects(test_cli._main, ["--checkp", "x.pth"], capsys)
    err = _rejects(search._main, ["a man", "--checkpoint", "c", "--galler", "g"], capsys)
    assert "--galler" in err
