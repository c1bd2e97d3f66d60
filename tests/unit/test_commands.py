"""Thin commands: every subcommand of `builder` and of `python -m loadtests` is a module with HELP,
add_arguments(parser) and run(args), the parsers are built from one table each, and a new subcommand is a module
plus one line. The variant `deploy` ships is chosen by the rollout library, not by the command."""

import types

import pytest

from builder import cli
from loadtests import commands as loadtests_commands
from loadtests.rollout.deploy import DeployError, choose_variant
from loadtests.rollout.plan import Plan, plan_variant


@pytest.mark.parametrize("table", [cli.COMMANDS, loadtests_commands.COMMANDS], ids=["builder", "loadtests"])
def test_every_subcommand_is_a_module_with_help_arguments_and_run(table):
    for name, module in table.items():
        assert isinstance(module, types.ModuleType), name
        assert isinstance(module.HELP, str) and module.HELP, name
        assert callable(module.add_arguments) and callable(module.run), name


def test_a_new_subcommand_is_a_module_and_one_line(monkeypatch, capsys):
    hello = types.ModuleType("hello")
    hello.HELP = "say hello"
    hello.add_arguments = lambda parser: parser.add_argument("--name", default="world")
    hello.run = lambda args: print(f"hello {args.name}") or 0
    monkeypatch.setitem(loadtests_commands.COMMANDS, "hello", hello)  # the one line
    assert loadtests_commands.main(["hello", "--name", "triton"]) == 0
    assert capsys.readouterr().out == "hello triton\n"
    with pytest.raises(SystemExit):
        loadtests_commands.main(["--help"])
    assert "say hello" in capsys.readouterr().out


def row(model):
    return types.SimpleNamespace(triton_model=model, entry={})


LINES = tuple(plan_variant(model, 100.0, 1, 1, 1, None, 100.0) for model in ("m_fp32", "m_int8"))


def report(cheapest="m_int8", recommended="m_fp32"):
    return {"sources": ["m"], "rows": [row("m_fp32"), row("m_int8"), row("m_pruned")],
            "plans": {"m": Plan(LINES, cheapest)},
            "recommendations": {"m": {"model": recommended, "text": "no variant meets the SLO"}}}


def test_deploy_ships_the_cheapest_planned_variant_unless_told_otherwise():
    assert (choose_variant(report(), None, None, 50).model, choose_variant(report(), None, None, 50).why) == (
        "m_int8", "cheapest meeting SLO and budgets")
    chosen = choose_variant(report(), "m", "m_fp32", 50)
    assert (chosen.model, chosen.why, chosen.line) == ("m_fp32", "chosen with --variant", LINES[0])
    assert choose_variant(report(cheapest=None), None, None, 50).why == "recommended"
    with pytest.raises(DeployError, match="`m_pruned` does not meet p99 <= 50 ms"):
        choose_variant(report(), None, "m_pruned", 50)  # built and served, but not within the SLO and budgets
    with pytest.raises(DeployError, match="unknown --model `x`"):
        choose_variant(report(), "x", None, 50)
