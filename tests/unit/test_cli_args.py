"""The `amora` CLI's broker/device options work before and after the subcommand."""

from __future__ import annotations

from pathlib import Path

from amora.cli import build_parser


def test_options_before_or_after_the_subcommand() -> None:
    p = build_parser()
    before = p.parse_args(["--config", "a.json", "--broker", "mqtts://h", "--json", "send", "play"])
    after = p.parse_args(["send", "play", "--config", "a.json", "--broker", "mqtts://h", "--json"])
    for args in (before, after):
        assert (args.action, args.command) == ("send", "play")
        assert (args.config, args.broker) == (Path("a.json"), "mqtts://h")
        assert (args.json, args.timeout) == (True, 10.0)


def test_after_the_subcommand_wins_and_absent_options_keep_their_defaults() -> None:
    p = build_parser()
    args = p.parse_args(["--config", "a.json", "--timeout", "3", "state", "--config", "b.json"])
    assert (args.config, args.timeout) == (Path("b.json"), 3.0)
    plain = p.parse_args(["watch"])
    assert (plain.config, plain.tls, plain.insecure) == (None, None, False)
    assert (plain.json, plain.timeout) == (False, 10.0)
