"""tiers.yaml: the shipped defaults, default deny, and errors that name the file and line."""

from pathlib import Path

import pytest

from bot.domain import Mode, Tier
from bot.policy import PolicyError, load_policy, parse_policy

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shipped():
    return load_policy(ROOT / "tiers.yaml")


@pytest.mark.parametrize(
    ("crm", "obj", "field", "tier"),
    [
        ("hubspot", "deals", "description", Tier.AUTONOMOUS),
        ("hubspot", "deals", "dealstage", Tier.REVIEWED),
        ("hubspot", "deals", "hs_next_step", Tier.REVIEWED),
        ("hubspot", "deals", "amount", Tier.NEVER_AUTONOMOUS),
        ("hubspot", "deals", "closedate", Tier.NEVER_AUTONOMOUS),
        ("hubspot", "deals", "hs_forecast_category", Tier.NEVER_AUTONOMOUS),
        ("hubspot", "deals", "hubspot_owner_id", Tier.NEVER_AUTONOMOUS),
        ("hubspot", "contacts", "jobtitle", Tier.AUTONOMOUS),
        ("hubspot", "companies", "industry", Tier.AUTONOMOUS),
        ("salesforce", "Opportunity", "Description", Tier.AUTONOMOUS),
        ("salesforce", "Opportunity", "StageName", Tier.REVIEWED),
        ("salesforce", "Opportunity", "NextStep", Tier.REVIEWED),
        ("salesforce", "Opportunity", "Amount", Tier.NEVER_AUTONOMOUS),
        ("salesforce", "Opportunity", "CloseDate", Tier.NEVER_AUTONOMOUS),
        ("salesforce", "Opportunity", "ForecastCategoryName", Tier.NEVER_AUTONOMOUS),
        ("salesforce", "Opportunity", "OwnerId", Tier.NEVER_AUTONOMOUS),
        ("salesforce", "Lead", "Rating", Tier.REVIEWED),
        # Default deny: unlisted fields and objects are read_only.
        ("hubspot", "deals", "pipeline", Tier.READ_ONLY),
        ("hubspot", "tickets", "subject", Tier.READ_ONLY),
        ("salesforce", "Account", "Name", Tier.READ_ONLY),
    ],
)
def test_shipped_tiers(shipped, crm, obj, field, tier):
    assert shipped.classify(crm, obj, field).tier == tier


def test_shipped_activities_and_owner_fields(shipped):
    assert shipped.classify_activity("hubspot", "deals", "note").tier == Tier.AUTONOMOUS
    assert shipped.classify_activity("hubspot", "deals", "task").tier == Tier.REVIEWED
    assert shipped.object("hubspot", "deals").owner_field == "hubspot_owner_id"
    assert shipped.object("salesforce", "Opportunity").owner_field == "OwnerId"
    assert shipped.classify_activity("hubspot", "tickets", "note").tier == Tier.READ_ONLY


def test_mode_and_global_shadow_switch():
    text = """
version: 1
gate: {shadow_all: true}
hubspot:
  deals:
    fields:
      description: autonomous
      dealstage: {tier: reviewed, mode: shadow, promotion: {min_samples: 5, min_precision: 0.8}}
"""
    policy = parse_policy(text)
    stage = policy.classify("hubspot", "deals", "dealstage")
    assert (stage.tier, stage.mode) == (Tier.REVIEWED, Mode.SHADOW)
    assert stage.promotion.min_samples == 5 and stage.promotion.min_precision == 0.8
    # shadow_all shadows every writable field, but never turns read_only into something else
    assert policy.classify("hubspot", "deals", "description").mode == Mode.SHADOW
    assert policy.classify("hubspot", "deals", "amount").tier == Tier.READ_ONLY


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("version: 1\nhubspot:\n  deals:\n    fields:\n      amount: sometimes\n", 5, "unknown tier 'sometimes'"),
        ("version: 1\nhubspot:\n  deals:\n    fields:\n      amount: {mode: shadow}\n", 5, "missing 'tier'"),
        ("version: 1\nhubspot:\n  deals:\n    fields:\n      a: {tier: reviewed, mode: dark}\n", 5, "unknown mode 'dark'"),
        ("version: 1\nhubspot:\n  deals:\n    fieldz: {}\n", 4, "unknown setting 'fieldz'"),
        ("version: 1\nhubspot:\n  deals:\n    activities:\n      email: autonomous\n", 5, "unknown activity kind 'email'"),
        ("version: 1\npipedrive: {}\n", 2, "unknown section 'pipedrive'"),
        ("version: 2\n", 1, "unsupported version"),
        ("hubspot: {}\n", 1, "missing 'version: 1'"),
        ("version: 1\nhubspot:\n  deals:\n    fields:\n      a: autonomous\n      a: reviewed\n", 6, "duplicate key 'a'"),
        ("version: 1\nhubspot: [deals]\n", 2, "must be a mapping"),
        ("version: 1\nhubspot:\n  deals:\n    fields: {a: autonomous\n", 5, "invalid YAML"),
        ("version: 1\ngate:\n  promotion: {min_precision: 1.5}\n", 3, "min_precision must be a number in (0, 1]"),
        ("", 1, "the file is empty"),
    ],
)
def test_malformed_file_names_file_line_and_problem(text, line, problem):
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "policy/tiers.yaml")
    message = str(info.value)
    assert message.startswith(f"policy/tiers.yaml:{line}: "), message
    assert problem in message


def test_missing_file(tmp_path):
    with pytest.raises(PolicyError, match="file not found"):
        load_policy(tmp_path / "nope.yaml")
