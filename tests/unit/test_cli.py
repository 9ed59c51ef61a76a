"""The command line's error paths, in process: a user's mistake is one line on stderr and exit code 2."""

from __future__ import annotations

import pytest

from detector.cli import EXIT_USAGE, build_parser, main


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--model", "no/such/bundle", "--normal", "x.npz", "--anomalous", "y.npz"], "no/such/bundle"),
    (["score", "--data", "x.npz", "--out", "o.csv"], "exactly one of --model BUNDLE or --server"),
    (["audit", "--model", "no/such/bundle", "--data", "fashion-mnist:test", "--out", "a"], "no/such/bundle"),
])
def test_a_user_mistake_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--quiet", *argv]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.startswith(f"detector {argv[0]}: error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_every_command_has_help_for_every_flag():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"train", "calibrate", "score", "evaluate", "serve", "audit", "health"}
    unexplained = [f"{name} {action.option_strings[0]}" for name, sub in commands.items() for action in sub._actions
                   if action.option_strings and not action.help and action.dest not in ("help",)]
    # --model/--data/--out-style flags carry a metavar that says it all; the rest must explain themselves.
    assert all(flag.split()[1] in {"--model", "--data", "--normal", "--anomalous", "--out", "--tls-key", "--target",
                                   "--service", "--timeout", "--batch-size"} for flag in unexplained), unexplained
