"""The one place that reads the environment.

Every setting has the name of its environment variable. A missing or contradictory setting
raises `ConfigError` whose message is one line naming the variable, so start-up can stop with
that line and no traceback.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./crm-gate.db"
SLACK_DEFAULT_API_URL = "https://slack.com/api/"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


class ConfigError(Exception):
    """A setting is missing or wrong. The message is one line that names the variable."""


def parse_duration(text: str | float | int | timedelta) -> timedelta:
    """'90s', '15m', '2h', '14d', '1w' or a number of seconds."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, int | float):
        return timedelta(seconds=float(text))
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h, 14d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


Duration = Annotated[timedelta, NoDecode]
CSV = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # --- Slack ---------------------------------------------------------------------------------
    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_api_url: str = SLACK_DEFAULT_API_URL
    slack_alerts_channel: str | None = None
    slack_ops_users: CSV = Field(default_factory=list)
    slack_ops_usergroup: str | None = None
    slack_review_delegates: CSV = Field(default_factory=list)
    review_fallback_channel: str | None = None
    # email=U123,email2=U456: who reviews when the CRM email and the Slack email differ
    slack_user_map: CSV = Field(default_factory=list)

    # --- CRM -----------------------------------------------------------------------------------
    crm: Literal["hubspot", "salesforce", "sandbox"] | None = None
    hubspot_access_token: SecretStr | None = None
    hubspot_api_url: str = "https://api.hubapi.com"
    hubspot_portal_id: str | None = None
    salesforce_instance_url: str | None = None
    salesforce_access_token: SecretStr | None = None
    salesforce_username: str | None = None
    salesforce_password: SecretStr | None = None
    salesforce_security_token: SecretStr | None = None
    salesforce_domain: str | None = None
    salesforce_api_version: str = "59.0"
    crm_max_workers: int = Field(default=8, ge=1, le=64)

    # --- the gate ------------------------------------------------------------------------------
    database_url: str = DEFAULT_DATABASE_URL
    tiers_file: Path = Path("tiers.yaml")
    host: str = "0.0.0.0"
    port: int = Field(default=3000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # auto: uvloop where it is installed, else asyncio's loop (see bot/loop.py)
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    max_changes_per_proposal: int = Field(default=50, ge=1, le=500)
    review_expiry: Duration = timedelta(hours=24)
    review_reminder: Duration | None = timedelta(hours=2)  # before expiry; 0 for none
    callback_signing_secret: SecretStr | None = None
    commit_linger: Duration = timedelta(milliseconds=50)
    commit_batch_size: int = Field(default=100, ge=1, le=200)
    # Under sustained load the committer spends at most this share of the CRM budget: passes are
    # spaced so that each carries what arrived meanwhile (fewer requests per change).
    commit_budget_share: float = Field(default=0.45, gt=0, le=1)
    # Review routing's share: under load a review reaches its reviewer a few seconds later.
    review_budget_share: float = Field(default=0.02, gt=0, le=1)
    lease_duration: Duration = timedelta(seconds=60)
    job_interval: Duration = timedelta(seconds=1)
    # --- shadow mode, drift, schema ------------------------------------------------------------
    shadow_all: bool | None = None  # overrides tiers.yaml's gate.shadow_all when set
    shadow_eval_delay: Duration = timedelta(hours=24)
    drift_window: Duration = timedelta(hours=24)
    drift_min_events: int = Field(default=10, ge=1)
    drift_rejection_rate: float = Field(default=0.3, gt=0, le=1)
    drift_edit_rate: float = Field(default=0.5, gt=0, le=1)
    drift_rollback_rate: float = Field(default=0.1, gt=0, le=1)
    volume_window: Duration = timedelta(hours=1)
    volume_alarm_share: float = Field(default=0.2, gt=0, le=1)
    volume_alarm_min_records: int = Field(default=20, ge=1)
    schema_check: Literal["strict", "lenient"] = "strict"
    schema_check_interval: Duration = timedelta(minutes=10)
    # --- the CRM's API budget ------------------------------------------------------------------
    crm_rate_limit: int = Field(default=0, ge=0)  # requests per CRM_RATE_WINDOW; 0: the CRM's default
    crm_rate_window: Duration = timedelta(seconds=10)
    crm_daily_limit: int | None = Field(default=None, ge=1)
    crm_daily_share: float = Field(default=1.0, gt=0, le=1)
    # Set when the sandbox is asked for explicitly (`serve --sandbox`).
    sandbox: bool = False

    @field_validator("slack_ops_users", "slack_review_delegates", "slack_user_map", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator(
        "review_expiry",
        "review_reminder",
        "commit_linger",
        "lease_duration",
        "job_interval",
        "shadow_eval_delay",
        "drift_window",
        "volume_window",
        "schema_check_interval",
        "crm_rate_window",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        return parse_duration(value)

    @field_validator("slack_user_map")
    @classmethod
    def _user_map(cls, value: list[str]) -> list[str]:
        for item in value:
            email, _, user = item.partition("=")
            if "@" not in email or not user.strip().startswith(("U", "W")):
                raise ValueError(f"expected email=SLACK_USER_ID pairs, got {item!r}")
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    @field_validator("database_url")
    @classmethod
    def _driver(cls, value: str) -> str:
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        if value.startswith("sqlite://") and not value.startswith("sqlite+aiosqlite://"):
            return "sqlite+aiosqlite://" + value.split("://", 1)[1]
        if not (
            value.startswith("sqlite+aiosqlite://") or value.startswith("postgresql+asyncpg://")
        ):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.crm is None:
            inferred = (
                "hubspot"
                if self.hubspot_access_token
                else "salesforce"
                if self.salesforce_instance_url
                else "sandbox"
            )
            object.__setattr__(self, "crm", inferred)
        if self.sandbox:
            object.__setattr__(self, "crm", "sandbox")
        if self.crm == "hubspot" and not self.hubspot_access_token:
            raise ValueError("HUBSPOT_ACCESS_TOKEN is required when CRM=hubspot")
        if self.crm == "salesforce":
            if not self.salesforce_instance_url and not self.salesforce_username:
                raise ValueError("SALESFORCE_INSTANCE_URL is required when CRM=salesforce")
            if not self.salesforce_access_token and not (
                self.salesforce_username and self.salesforce_password
            ):
                raise ValueError(
                    "SALESFORCE_ACCESS_TOKEN (or SALESFORCE_USERNAME and SALESFORCE_PASSWORD) "
                    "is required when CRM=salesforce"
                )
        if self.slack_bot_token is None:
            if self.crm != "sandbox":
                raise ValueError(
                    f"SLACK_BOT_TOKEN is required when CRM={self.crm} "
                    "(without it the gate runs only in sandbox mode)"
                )
            if self.slack_app_token is not None:
                raise ValueError("SLACK_APP_TOKEN is set but SLACK_BOT_TOKEN is not")
        else:
            if not self.slack_bot_token.get_secret_value().startswith("xoxb-"):
                raise ValueError("SLACK_BOT_TOKEN must be a bot token (xoxb-...)")
            if self.slack_app_token is None and self.slack_signing_secret is None:
                raise ValueError(
                    "SLACK_SIGNING_SECRET is required in HTTP mode (or set SLACK_APP_TOKEN "
                    "for Socket Mode)"
                )
            if (
                self.slack_app_token is not None
                and not self.slack_app_token.get_secret_value().startswith("xapp-")
            ):
                raise ValueError("SLACK_APP_TOKEN must be an app-level token (xapp-...)")
            if not self.slack_alerts_channel:
                raise ValueError("SLACK_ALERTS_CHANNEL is required when SLACK_BOT_TOKEN is set")
        return self

    # --- derived ---------------------------------------------------------------------------------
    @property
    def slack_sandbox(self) -> bool:
        """No Slack token: the Slack stand-in runs in-process and the client points at it."""
        return self.slack_bot_token is None

    @property
    def user_map(self) -> dict[str, str]:
        return {e.strip().lower(): u.strip() for e, _, u in (i.partition("=") for i in self.slack_user_map)}

    @property
    def crm_sandbox(self) -> bool:
        return self.crm == "sandbox"

    @property
    def policy_crm(self) -> str:
        """The tiers.yaml section that applies: the sandbox CRM speaks HubSpot's names."""
        return "hubspot" if self.crm == "sandbox" else str(self.crm)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (plus explicit overrides) or raise ConfigError with one clear line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = [str(part) for part in err.get("loc", ()) if part != "__root__"]
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if loc:
        var = loc[0].upper()
        value = err.get("input")
        shown = (
            ""
            if "secret" in var.lower() or "token" in var.lower() or "password" in var.lower()
            else f" (got {value!r})"
            if isinstance(value, str | int | float)
            else ""
        )
        return f"{var}: {msg}{shown}"
    return msg
