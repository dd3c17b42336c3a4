"""The rules that keep the code easy to change (DESIGN.md), checked on the source itself."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BOT = Path(__file__).resolve().parent.parent / "bot"
VENDORS = ("slack_bolt", "slack_sdk", "hubspot", "simple_salesforce")


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted((BOT / "engine").glob("*.py")), ids=lambda p: p.name)
def test_engine_knows_neither_slack_nor_a_crm_vendor(path):
    bad = {m for m in imports(path) if m.split(".")[0] in VENDORS or m.startswith(("bot.slack", "bot.crm", "bot.web"))}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sorted((BOT / "engine").glob("*.py")), ids=lambda p: p.name)
def test_engine_leaves_sql_to_the_ledger(path):
    bad = {m for m in imports(path) if m.split(".")[0] == "sqlalchemy" or m == "bot.ledger.tables"}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sorted((BOT / "crm").glob("*.py")), ids=lambda p: p.name)
def test_crm_adapters_never_import_slack(path):
    bad = {m for m in imports(path) if m.split(".")[0] in ("slack_bolt", "slack_sdk") or m.startswith("bot.slack")}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sorted((BOT / "slack").glob("*.py")), ids=lambda p: p.name)
def test_slack_calls_the_engine_never_the_ledger(path):
    # Only the clock helper may come from the ledger package; every state change goes through
    # an engine use-case.
    bad = {m for m in imports(path) if m.startswith("bot.ledger") and m != "bot.ledger.repo"}
    assert not bad, f"{path.name} imports {sorted(bad)}"
    assert "gate.ledger" not in path.read_text(), f"{path.name} reaches into the ledger"


def test_engine_and_policy_type_check_strictly():
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "bot/engine", "bot/policy.py"],
        cwd=BOT.parent, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
