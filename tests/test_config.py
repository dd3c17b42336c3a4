"""Configuration from the environment: defaults, inference, and one-line errors naming the variable."""

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings, parse_duration

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_VARS = [
    "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "SLACK_API_URL", "SLACK_ALERTS_CHANNEL",
    "SLACK_OPS_USERS", "REVIEW_FALLBACK_CHANNEL", "CRM", "HUBSPOT_ACCESS_TOKEN", "HUBSPOT_API_URL",
    "SALESFORCE_INSTANCE_URL", "SALESFORCE_ACCESS_TOKEN", "DATABASE_URL", "TIERS_FILE", "PORT",
]


@pytest.fixture
def env(monkeypatch):
    for name in CONTRACT_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_are_the_sandbox(env):
    s = load_settings()
    assert s.crm == "sandbox" and s.slack_sandbox and s.crm_sandbox
    assert s.database_url.startswith("sqlite+aiosqlite://")
    assert s.port == 3000 and s.tiers_file == Path("tiers.yaml")
    assert s.policy_crm == "hubspot"


def test_reads_the_contract_names(env):
    env.setenv("CRM", "hubspot")
    env.setenv("HUBSPOT_ACCESS_TOKEN", "pat-na1-secret")
    env.setenv("HUBSPOT_API_URL", "http://127.0.0.1:9999")
    env.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    env.setenv("SLACK_SIGNING_SECRET", "shh")
    env.setenv("SLACK_ALERTS_CHANNEL", "C1")
    env.setenv("SLACK_OPS_USERS", "U1, U2,U3")
    env.setenv("SLACK_API_URL", "http://127.0.0.1:9998/api")
    env.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1/test")
    env.setenv("PORT", "8080")
    s = load_settings()
    assert s.crm == "hubspot" and not s.slack_sandbox
    assert s.slack_ops_users == ["U1", "U2", "U3"]
    assert s.slack_api_url == "http://127.0.0.1:9998/api/"
    assert s.database_url == "postgresql+asyncpg://postgres@127.0.0.1/test"
    assert s.port == 8080
    assert s.hubspot_access_token.get_secret_value() == "pat-na1-secret"
    assert "pat-na1-secret" not in repr(s)


def test_crm_inferred_from_credentials(env):
    env.setenv("SALESFORCE_INSTANCE_URL", "https://x.my.salesforce.com")
    env.setenv("SALESFORCE_ACCESS_TOKEN", "00D!tok")
    env.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    env.setenv("SLACK_APP_TOKEN", "xapp-1")
    env.setenv("SLACK_ALERTS_CHANNEL", "C1")
    assert load_settings().crm == "salesforce"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"CRM": "hubspot"}, "HUBSPOT_ACCESS_TOKEN is required when CRM=hubspot"),
        ({"CRM": "salesforce", "SALESFORCE_ACCESS_TOKEN": "t"}, "SALESFORCE_INSTANCE_URL is required"),
        ({"CRM": "pipedrive"}, "CRM: Input should be 'hubspot', 'salesforce' or 'sandbox'"),
        ({"CRM": "hubspot", "HUBSPOT_ACCESS_TOKEN": "t"}, "SLACK_BOT_TOKEN is required when CRM=hubspot"),
        ({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_ALERTS_CHANNEL": "C1"}, "SLACK_SIGNING_SECRET is required"),
        ({"SLACK_BOT_TOKEN": "xoxp-1", "SLACK_SIGNING_SECRET": "s"}, "SLACK_BOT_TOKEN must be a bot token"),
        ({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s"}, "SLACK_ALERTS_CHANNEL is required"),
        ({"PORT": "seventy"}, "PORT: Input should be a valid integer"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL: must start with sqlite+aiosqlite://"),
        ({"REVIEW_EXPIRY": "soon"}, "REVIEW_EXPIRY: not a duration"),
    ],
)
def test_bad_settings_give_one_line_naming_the_variable(env, values, message):
    for name, value in values.items():
        env.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_secret_values_never_echoed(env):
    env.setenv("SLACK_BOT_TOKEN", "xoxp-very-secret")
    env.setenv("SLACK_SIGNING_SECRET", "s")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "very-secret" not in str(info.value)


def test_durations():
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("14d") == timedelta(days=14)
    assert parse_duration("50ms") == timedelta(milliseconds=50)
    with pytest.raises(ValueError):
        parse_duration("two hours")


def serve_once(cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """`python -m bot serve` with only `settings` of the contract's variables set."""
    env = {k: v for k, v in os.environ.items() if k not in CONTRACT_VARS}
    env.update(settings)
    return subprocess.run(
        [sys.executable, "-m", "bot", "serve"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_stops_with_one_line_and_no_traceback(tmp_path):
    proc = serve_once(tmp_path, CRM="hubspot")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: HUBSPOT_ACCESS_TOKEN is required when CRM=hubspot"


def test_an_unknown_event_loop_stops_the_cli_with_one_line(tmp_path):
    proc = serve_once(tmp_path, EVENT_LOOP="trio")
    assert proc.returncode == 2
    assert "EVENT_LOOP" in proc.stderr and "auto" in proc.stderr and "Traceback" not in proc.stderr


def test_the_event_loop_is_uvloop_unless_asked_otherwise(monkeypatch):
    import asyncio

    import uvloop

    from bot import loop
    from bot.config import ConfigError

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert loop.run(which(), "auto").startswith("uvloop")
    assert loop.run(which(), "uvloop").startswith("uvloop")
    assert loop.run(which(), "asyncio").startswith("asyncio")
    assert loop.loop_factory("auto") is uvloop.new_event_loop
    with pytest.raises(ConfigError, match="expected one of auto, uvloop, asyncio"):
        loop.run(which(), "trio")
    # Where uvloop cannot be imported (Windows), auto falls back and uvloop is an error.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert loop.run(which(), "auto").startswith("asyncio")
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        loop.loop_factory("uvloop")


def test_cli_names_tiers_file_line(tmp_path):
    bad = tmp_path / "tiers.yaml"
    bad.write_text("version: 1\nhubspot:\n  deals:\n    fields:\n      amount: maybe\n")
    proc = serve_once(tmp_path, TIERS_FILE=str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"error: {bad}:5: ")
    assert "Traceback" not in proc.stderr


async def test_the_tests_run_on_the_loop_the_service_runs_on():
    import asyncio

    from helpers import service_loop

    assert type(asyncio.get_running_loop()).__module__.partition(".")[0] == service_loop()
