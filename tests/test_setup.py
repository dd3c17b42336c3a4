"""Set-up as a newcomer meets it: `make run`, the agents CLI, the database files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port, service_loop

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ("SLACK_", "HUBSPOT_", "SALESFORCE_", "CRM", "DATABASE_URL", "TIERS_FILE", "PORT")




def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONTRACT)}
    env.update(extra)
    return env


def test_make_run_answers_healthz_within_30_seconds(tmp_path):
    port = free_port()
    env = clean_env(PORT=str(port), DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'gate.db'}")
    proc = subprocess.Popen(
        ["make", "-s", "run"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    assert resp.status == 200
                    health = json.loads(resp.read())
                    assert health["sandbox"] is True
                    assert health["event_loop"] == service_loop()  # uvloop unless EVENT_LOOP says otherwise
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() - started > 30:
                    pytest.fail(f"make run did not answer /healthz within 30 s:\n{proc.stdout.read() if proc.poll() is not None else ''}")
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/sandbox/", timeout=5) as resp:
            assert resp.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert "SANDBOX MODE" in output and "HUBSPOT_ACCESS_TOKEN" in output and "SLACK_BOT_TOKEN" in output
    assert f"http://localhost:{port}/sandbox/" in output
    assert "gk_" not in output  # the sandbox key goes to a file, never to the log


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_agents_cli(tmp_path):
    env = clean_env(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'gate.db'}")
    added = run("agents", "add", "enricher", env=env)
    assert added.returncode == 0
    key = added.stdout.strip().splitlines()[-1]
    assert key.startswith("gk_")
    assert run("agents", "add", "enricher", env=env).stderr.strip() == "error: an agent named 'enricher' already exists"
    listed = run("agents", "list", env=env)
    assert "enricher" in listed.stdout and "active" in listed.stdout and key not in listed.stdout
    assert run("agents", "revoke", "enricher", env=env).returncode == 0
    assert "revoked" in run("agents", "list", env=env).stdout
    again = run("agents", "revoke", "enricher", env=env)
    assert again.returncode == 2 and "no active agent named 'enricher'" in again.stderr
    bad = run("agents", "add", "two words", env=env)
    assert bad.returncode == 2 and "agent name" in bad.stderr


def test_sqlite_runs_in_wal_mode(tmp_path):
    import sqlite3

    env = clean_env(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'gate.db'}")
    assert run("db", "upgrade", env=env).stdout.strip() == "database at revision 0002"
    mode = sqlite3.connect(tmp_path / "gate.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
