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


def _awaits(node: ast.AST) -> list[str]:
    """The names of the methods awaited anywhere in `node` (`execute`, `_append_audit`...)."""
    return [
        n.value.func.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Await) and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Attribute)
    ]


def _blocks(node: ast.AST) -> list[list[ast.stmt]]:
    return [b for f in ("body", "orelse", "finalbody") if isinstance(b := getattr(node, f, None), list)]


def _awaited_after_audit(transaction: ast.AsyncWith) -> list[tuple[int, list[str]]]:
    """For every `await self._append_audit(...)` in the transaction: what is awaited after it on
    the way out of the transaction (up through the enclosing blocks, unless a block returns or
    raises first)."""
    found = []

    def visit(block: list[ast.stmt], outer: list[list[ast.stmt]]) -> None:
        for i, statement in enumerate(block):
            direct = isinstance(statement, ast.Expr) and "_append_audit" in _awaits(statement)
            if direct:
                later, chain = block[i + 1 :], [*outer]
                after = []
                while True:
                    after += [name for s in later for name in _awaits(s)]
                    if any(isinstance(s, (ast.Return, ast.Raise)) for s in later) or not chain:
                        break
                    later = chain.pop()
                found.append((statement.lineno, after))
            for inner in _blocks(statement):
                visit(inner, [*outer, block[i + 1 :]])

    visit(transaction.body, [])
    return found


def test_the_audit_chain_lock_is_taken_last_in_every_transaction():
    """The chain's lock (PostgreSQL) is taken inside `_append_audit`; a row written after it
    would be a lock awaited while holding it, the recipe for a deadlock with a transaction that
    locked that row first and now waits for the chain."""
    tree = ast.parse((BOT / "ledger" / "repo.py").read_text())
    appends = [a for n in ast.walk(tree) if isinstance(n, ast.AsyncWith) for a in _awaited_after_audit(n)]
    assert len(appends) >= 10  # every audited transaction of the ledger was looked at
    late = [(line, after) for line, after in appends if after]
    assert not late, f"awaited after _append_audit in the same transaction (repo.py line, calls): {late}"
