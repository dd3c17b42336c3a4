"""The schema module against the real stand-ins, through the real adapters over 127.0.0.1: the
shipped tiers.yaml checked against each CRM, drift (renamed and read-only fields, a missing
object) found and alerted once, the describe cache, and proposed values checked per field type."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.crm.hubspot import HubSpotCRM
from bot.crm.salesforce import SalesforceCRM
from bot.engine.ports import CRMError, CRMErrorKind, FieldOption, FieldSchema
from bot.engine.schema import (
    Finding,
    SchemaCache,
    SchemaWatch,
    check_policy,
    validate_changes,
    validate_value,
)
from bot.policy import Policy, load_policy, parse_policy
from bot.sandbox.hubspot import HubSpotStandIn
from bot.sandbox.salesforce import SalesforceStandIn

ROOT = Path(__file__).resolve().parent.parent
HS_PROPERTIES = "/crm/v3/properties/deals"
HS_PIPELINES = "/crm/v3/pipelines/deals"
SF_DESCRIBE = "/services/data/v59.0/sobjects/Opportunity/describe"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def policy() -> Policy:
    return load_policy(ROOT / "tiers.yaml")


@pytest.fixture
async def hs_crm(hubspot: HubSpotStandIn) -> AsyncIterator[HubSpotCRM]:
    adapter = HubSpotCRM(hubspot.token or "", hubspot.url)
    yield adapter
    await adapter.close()


@pytest.fixture
async def sf_crm(salesforce: SalesforceStandIn) -> AsyncIterator[SalesforceCRM]:
    adapter = SalesforceCRM(salesforce.url, salesforce.token)
    yield adapter
    await adapter.close()


@pytest.fixture
def hs_schemas(hs_crm: HubSpotCRM) -> SchemaCache:
    return SchemaCache(hs_crm)


@pytest.fixture
def sf_schemas(sf_crm: SalesforceCRM) -> SchemaCache:
    return SchemaCache(sf_crm)


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def only(findings: list[Finding], field: str) -> Finding:
    matching = [f for f in findings if f.field == field]
    assert len(matching) == 1, findings
    return matching[0]


# --- the shipped policy against the stand-ins ----------------------------------------------------
async def test_shipped_policy_passes_on_hubspot(
    policy: Policy, hubspot: HubSpotStandIn, hs_schemas: SchemaCache
) -> None:
    findings = await check_policy(policy, "hubspot", hs_schemas)

    assert findings == [], [f.message for f in findings]
    # It really looked: one properties call per object listed in the hubspot section.
    assert set(policy.objects["hubspot"]) == {"deals", "contacts", "companies"}
    for object_type in ("deals", "contacts", "companies"):
        assert hubspot.count(f"/crm/v3/properties/{object_type}") == 1


async def test_shipped_policy_passes_on_salesforce(
    policy: Policy, salesforce: SalesforceStandIn, sf_schemas: SchemaCache
) -> None:
    findings = await check_policy(policy, "salesforce", sf_schemas)

    assert findings == [], [f.message for f in findings]
    assert set(policy.objects["salesforce"]) == {"Opportunity", "Lead", "Contact"}
    for sobject in ("Opportunity", "Lead", "Contact"):
        assert salesforce.count(f"/services/data/v59.0/sobjects/{sobject}/describe") == 1


# --- drift ---------------------------------------------------------------------------------------
async def test_renamed_hubspot_field_is_a_missing_field_with_the_new_name_suggested(
    policy: Policy, hubspot: HubSpotStandIn, hs_schemas: SchemaCache
) -> None:
    hubspot.rename_property("deals", "dealstage", "deal_stage_v2")

    findings = await check_policy(policy, "hubspot", hs_schemas)

    finding = only(findings, "dealstage")
    assert (finding.crm, finding.object_type, finding.problem, finding.severity) == (
        "hubspot",
        "deals",
        "missing_field",
        "error",
    )
    assert finding.suggestions[0] == "deal_stage_v2"
    assert finding.message.startswith(
        "hubspot deals.dealstage: the field does not exist in the CRM (was it renamed?)"
    )
    assert "reviewed" in finding.message and "deal_stage_v2" in finding.message
    assert findings == [finding]  # nothing else drifted


async def test_renamed_salesforce_field_is_a_missing_field_with_the_new_name_suggested(
    policy: Policy, salesforce: SalesforceStandIn, sf_schemas: SchemaCache
) -> None:
    salesforce.rename_field("Opportunity", "NextStep", "Next_Step__c")

    findings = await check_policy(policy, "salesforce", sf_schemas)

    assert len(findings) == 1
    finding = findings[0]
    assert (finding.object_type, finding.field, finding.problem, finding.severity) == (
        "Opportunity",
        "NextStep",
        "missing_field",
        "error",
    )
    assert finding.suggestions[0] == "Next_Step__c"
    assert "salesforce Opportunity.NextStep: the field does not exist" in finding.message


async def test_renamed_owner_and_name_fields_are_errors(
    policy: Policy, hubspot: HubSpotStandIn, hs_schemas: SchemaCache
) -> None:
    # dealname is not a listed field, only the name_field: it must still exist.
    hubspot.rename_property("deals", "dealname", "deal_title")
    hubspot.rename_property("companies", "hubspot_owner_id", "company_owner")

    findings = await check_policy(policy, "hubspot", hs_schemas)

    name = only(findings, "dealname")
    assert (name.object_type, name.problem, name.severity) == ("deals", "missing_field", "error")
    assert "name_field" in name.message
    owner = only(findings, "hubspot_owner_id")
    assert (owner.object_type, owner.severity) == ("companies", "error")
    # One finding, naming both reasons it matters: a listed field and the owner_field.
    assert "never_autonomous" in owner.message and "owner_field" in owner.message
    assert len(findings) == 2


async def test_hubspot_read_only_autonomous_field_is_not_writable(
    policy: Policy, hubspot: HubSpotStandIn, hs_schemas: SchemaCache
) -> None:
    hubspot.set_read_only("deals", "description")

    findings = await check_policy(policy, "hubspot", hs_schemas)

    assert len(findings) == 1
    finding = findings[0]
    assert (finding.object_type, finding.field, finding.problem, finding.severity) == (
        "deals",
        "description",
        "not_writable",
        "error",
    )
    assert "read-only in the CRM" in finding.message and "autonomous" in finding.message


async def test_salesforce_non_updateable_autonomous_field_is_not_writable(
    policy: Policy, salesforce: SalesforceStandIn, sf_schemas: SchemaCache
) -> None:
    salesforce.set_updateable("Lead", "Title", False)

    findings = await check_policy(policy, "salesforce", sf_schemas)

    assert [(f.object_type, f.field, f.problem, f.severity) for f in findings] == [
        ("Lead", "Title", "not_writable", "error")
    ]


async def test_read_only_tier_fields_may_be_missing_or_unwritable(
    hubspot: HubSpotStandIn, hs_schemas: SchemaCache
) -> None:
    policy = parse_policy(
        """
version: 1
hubspot:
  deals:
    owner_field: hubspot_owner_id
    fields:
      hs_is_closed: read_only      # computed by HubSpot: never writable, and that is fine
      legacy_score: read_only      # gone: worth a warning, not an error
      amount: autonomous
"""
    )

    findings = await check_policy(policy, "hubspot", hs_schemas)

    assert [(f.field, f.problem, f.severity) for f in findings] == [
        ("legacy_score", "missing_field", "warning")
    ]


async def test_missing_objects_are_reported_once_each(
    hubspot: HubSpotStandIn,
    salesforce: SalesforceStandIn,
    hs_schemas: SchemaCache,
    sf_schemas: SchemaCache,
) -> None:
    policy = parse_policy(
        """
version: 1
hubspot:
  widgets: {owner_field: hubspot_owner_id, fields: {colour: autonomous, size: reviewed}}
  deals: {fields: {description: autonomous}}
salesforce:
  Widget__c: {owner_field: OwnerId, fields: {Colour__c: autonomous}}
"""
    )

    hs = await check_policy(policy, "hubspot", hs_schemas)
    sf = await check_policy(policy, "salesforce", sf_schemas)

    assert [(f.object_type, f.field, f.problem, f.severity) for f in hs] == [
        ("widgets", None, "missing_object", "error")
    ]
    assert hs[0].message.startswith("hubspot widgets: the object does not exist in the CRM")
    assert [(f.object_type, f.field, f.problem) for f in sf] == [
        ("Widget__c", None, "missing_object")
    ]

    async def ignore(new: list[Finding], resolved: list[Finding]) -> None:
        pass

    watch = SchemaWatch(policy, "hubspot", hs_schemas, on_change=ignore)
    await watch.run_once()
    blocked = watch.blocked_fields()
    assert set(blocked) == {("widgets", "colour"), ("widgets", "size")}
    assert watch.blocked_objects() == {"widgets": hs[0].message}


async def test_an_outage_is_not_a_finding(
    policy: Policy, hubspot: HubSpotStandIn, hs_schemas: SchemaCache
) -> None:
    hubspot.faults.fail_next(1, 503, {"message": "down"}, path_prefix="/crm/v3/properties/")

    with pytest.raises(CRMError) as caught:
        await check_policy(policy, "hubspot", hs_schemas)
    assert caught.value.kind is CRMErrorKind.TRANSIENT
    assert await check_policy(policy, "hubspot", hs_schemas) == []


# --- the watch -----------------------------------------------------------------------------------
async def test_watch_alerts_once_per_change_and_blocks_the_drifted_field(
    policy: Policy, hubspot: HubSpotStandIn, hs_schemas: SchemaCache
) -> None:
    calls: list[tuple[list[Finding], list[Finding]]] = []

    async def on_change(new: list[Finding], resolved: list[Finding]) -> None:
        calls.append((new, resolved))

    watch = SchemaWatch(policy, "hubspot", hs_schemas, on_change=on_change)
    assert await watch.run_once() == []
    assert calls == [] and watch.blocked_fields() == {}

    hubspot.rename_property("deals", "dealstage", "deal_stage")
    for _ in range(3):
        findings = await watch.run_once()
        assert [(f.field, f.problem) for f in findings] == [("dealstage", "missing_field")]

    assert len(calls) == 1
    new, resolved = calls[0]
    assert [(f.object_type, f.field, f.problem) for f in new] == [
        ("deals", "dealstage", "missing_field")
    ]
    assert resolved == []
    blocked = watch.blocked_fields()
    assert list(blocked) == [("deals", "dealstage")]
    assert "does not exist" in blocked[("deals", "dealstage")]
    assert "deal_stage" in blocked[("deals", "dealstage")]

    hubspot.rename_property("deals", "deal_stage", "dealstage")
    for _ in range(3):
        assert await watch.run_once() == []

    assert len(calls) == 2
    new, resolved = calls[1]
    assert new == []
    assert [(f.field, f.problem) for f in resolved] == [("dealstage", "missing_field")]
    assert watch.blocked_fields() == {}


async def test_watch_sees_a_change_despite_the_cache(
    policy: Policy, hubspot: HubSpotStandIn, hs_crm: HubSpotCRM
) -> None:
    schemas = SchemaCache(hs_crm, ttl=3600)
    assert await check_policy(policy, "hubspot", schemas) == []  # the cache is now warm
    hubspot.set_read_only("contacts", "jobtitle")
    calls: list[list[Finding]] = []

    async def on_change(new: list[Finding], resolved: list[Finding]) -> None:
        calls.append(new)

    watch = SchemaWatch(policy, "hubspot", schemas, on_change=on_change)
    await watch.run_once()

    assert [[(f.field, f.problem) for f in new] for new in calls] == [
        [("jobtitle", "not_writable")]
    ]
    # ...and the refreshed schema is what intake now reads from the shared cache.
    assert (await schemas.get("contacts"))["jobtitle"].writable is False


async def test_watch_offers_an_unsent_alert_again(
    policy: Policy, salesforce: SalesforceStandIn, sf_schemas: SchemaCache
) -> None:
    attempts: list[list[Finding]] = []

    async def flaky(new: list[Finding], resolved: list[Finding]) -> None:
        attempts.append(new)
        if len(attempts) == 1:
            raise RuntimeError("Slack is down")

    watch = SchemaWatch(policy, "salesforce", sf_schemas, on_change=flaky)
    salesforce.set_updateable("Opportunity", "Description", False)

    with pytest.raises(RuntimeError):
        await watch.run_once()
    # Blocked at once, even though nobody has been told yet.
    assert list(watch.blocked_fields()) == [("Opportunity", "Description")]
    await watch.run_once()
    await watch.run_once()

    assert len(attempts) == 2  # failed once, delivered once, then quiet
    assert [(f.field, f.problem) for f in attempts[1]] == [("Description", "not_writable")]


async def test_watch_keeps_its_findings_through_an_outage(
    policy: Policy, hubspot: HubSpotStandIn, hs_schemas: SchemaCache
) -> None:
    calls: list[tuple[list[Finding], list[Finding]]] = []

    async def on_change(new: list[Finding], resolved: list[Finding]) -> None:
        calls.append((new, resolved))

    watch = SchemaWatch(policy, "hubspot", hs_schemas, on_change=on_change)
    hubspot.set_read_only("companies", "industry")
    await watch.run_once()
    hubspot.faults.fail_next(1, 502, "Bad Gateway", path_prefix="/crm/v3/properties/")

    with pytest.raises(CRMError):
        await watch.run_once()

    assert list(watch.blocked_fields()) == [("companies", "industry")]
    await watch.run_once()
    assert len(calls) == 1  # the outage neither resolved nor re-raised the finding


# --- the cache -----------------------------------------------------------------------------------
async def test_concurrent_gets_share_one_describe_until_the_ttl(
    hubspot: HubSpotStandIn, hs_crm: HubSpotCRM
) -> None:
    clock = Clock()
    schemas = SchemaCache(hs_crm, ttl=600, clock=clock)
    hubspot.faults.latency = 0.05  # so the twenty gets really overlap the describe

    results = await asyncio.gather(*(schemas.get("deals") for _ in range(20)))

    assert hubspot.count(HS_PROPERTIES) == 1 and hubspot.count(HS_PIPELINES) == 1
    assert all(r == results[0] for r in results) and "dealstage" in results[0]

    clock.now += 599
    await asyncio.gather(*(schemas.get("deals") for _ in range(5)))
    assert hubspot.count(HS_PROPERTIES) == 1

    clock.now += 2
    await asyncio.gather(*(schemas.get("deals") for _ in range(5)))
    assert hubspot.count(HS_PROPERTIES) == 2


async def test_salesforce_concurrent_gets_share_one_describe(
    salesforce: SalesforceStandIn, sf_crm: SalesforceCRM
) -> None:
    schemas = SchemaCache(sf_crm)
    results = await asyncio.gather(*(schemas.get("Opportunity") for _ in range(20)))

    assert salesforce.count(SF_DESCRIBE) == 1
    assert all(r["StageName"] == results[0]["StageName"] for r in results)


async def test_a_failed_describe_reaches_every_caller_and_is_not_cached(
    hubspot: HubSpotStandIn, hs_schemas: SchemaCache
) -> None:
    hubspot.faults.latency = 0.02
    hubspot.faults.fail_next(1, 429, {"message": "slow down"}, path_prefix=HS_PROPERTIES)

    outcomes = await asyncio.gather(
        *(hs_schemas.get("deals") for _ in range(10)), return_exceptions=True
    )

    assert all(isinstance(o, CRMError) for o in outcomes), outcomes
    assert {o.kind for o in outcomes if isinstance(o, CRMError)} == {CRMErrorKind.RATE_LIMITED}
    assert hubspot.count(HS_PROPERTIES) == 1
    assert "amount" in await hs_schemas.get("deals")
    assert hubspot.count(HS_PROPERTIES) == 2


async def test_invalidate_one_object_or_all(
    hubspot: HubSpotStandIn, hs_schemas: SchemaCache
) -> None:
    await hs_schemas.get("deals")
    await hs_schemas.get("contacts")

    hs_schemas.invalidate("deals")
    await hs_schemas.get("deals")
    await hs_schemas.get("contacts")
    assert hubspot.count(HS_PROPERTIES) == 2
    assert hubspot.count("/crm/v3/properties/contacts") == 1

    hs_schemas.invalidate()
    await hs_schemas.get("deals")
    await hs_schemas.get("contacts")
    assert hubspot.count(HS_PROPERTIES) == 3
    assert hubspot.count("/crm/v3/properties/contacts") == 2


async def test_a_describe_started_before_invalidate_is_not_cached(
    hubspot: HubSpotStandIn, hs_schemas: SchemaCache
) -> None:
    hubspot.faults.latency = 0.05
    before = asyncio.create_task(hs_schemas.get("deals"))
    await asyncio.sleep(0.01)  # the describe is on the wire
    hubspot.set_read_only("deals", "description")
    hs_schemas.invalidate("deals")

    await before
    after = await hs_schemas.get("deals")

    assert hubspot.count(HS_PROPERTIES) == 2
    assert after["description"].writable is False


async def test_a_cancelled_caller_does_not_cancel_the_shared_describe(
    hubspot: HubSpotStandIn, hs_schemas: SchemaCache
) -> None:
    hubspot.faults.latency = 0.05
    impatient = asyncio.create_task(hs_schemas.get("deals"))
    patient = asyncio.create_task(hs_schemas.get("deals"))
    await asyncio.sleep(0.01)
    impatient.cancel()

    schema = await patient

    assert impatient.cancelled()
    assert "dealstage" in schema
    assert hubspot.count(HS_PROPERTIES) == 1


# --- values --------------------------------------------------------------------------------------
async def test_hubspot_dealstage_takes_the_pipeline_stages(
    hubspot: HubSpotStandIn, hs_schemas: SchemaCache
) -> None:
    stage = (await hs_schemas.get("deals"))["dealstage"]

    assert validate_value(stage, "closedwon") is None
    assert validate_value(stage, "qualifiedtobuy") is None
    label = validate_value(stage, "Closed Won")
    assert label is not None
    assert "dealstage" in label and 'did you mean "closedwon"' in label
    bogus = validate_value(stage, "negotiation")
    assert bogus is not None
    assert bogus.startswith('"negotiation" is not an allowed value of dealstage (Deal Stage)')
    for allowed in ("appointmentscheduled", "contractsent", "closedwon", "closedlost"):
        assert f'"{allowed}"' in bogus
    assert "(Contract Sent)" in bogus

    # A stage added in HubSpot's settings is allowed once the schema is read again.
    hubspot.add_pipeline_stage("deals", "default", "negotiation", "Negotiation")
    assert validate_value(stage, "negotiation") is not None
    hs_schemas.invalidate("deals")
    assert validate_value((await hs_schemas.get("deals"))["dealstage"], "negotiation") is None


async def test_salesforce_stagename_takes_the_picklist(sf_schemas: SchemaCache) -> None:
    schema = await sf_schemas.get("Opportunity")
    stage = schema["StageName"]

    assert validate_value(stage, "Closed Won") is None
    assert validate_value(stage, "Negotiation/Review") is None
    refused = validate_value(stage, "Won")
    assert refused is not None
    assert "StageName (Stage)" in refused
    assert '"Prospecting"' in refused and '"Closed Lost"' in refused
    wrong_case = validate_value(stage, "closed won")
    assert wrong_case is not None and 'did you mean "Closed Won"' in wrong_case
    # Lead.Rating: a restricted picklist too.
    rating = (await sf_schemas.get("Lead"))["Rating"]
    assert validate_value(rating, "Warm") is None
    assert validate_value(rating, "Lukewarm") is not None


async def test_numbers(sf_schemas: SchemaCache, hs_schemas: SchemaCache) -> None:
    amounts = [
        (await sf_schemas.get("Opportunity"))["Amount"],
        (await hs_schemas.get("deals"))["amount"],
    ]
    for amount in amounts:
        for good in (48000, 48000.5, "48000", "-12.50", "1.5e3", " 7 ", ".5"):
            assert validate_value(amount, good) is None, good
        for bad in ("12k", "48,000", "NaN", "inf", math.nan, math.inf, True, "1_000", "$5"):
            message = validate_value(amount, bad)
            assert message is not None, bad
            assert "takes a number" in message and amount.name in message


async def test_dates(
    sf_schemas: SchemaCache, hubspot: HubSpotStandIn, hs_schemas: SchemaCache
) -> None:
    close = (await sf_schemas.get("Opportunity"))["CloseDate"]
    assert close.type == "date"
    assert validate_value(close, "2024-06-30") is None
    for bad in ("2024-02-30", "30/06/2024", "June 30", 20240630, "2024-6-30"):
        message = validate_value(close, bad)
        assert message is not None and "YYYY-MM-DD" in message and "CloseDate" in message, bad

    renewal = (await hs_schemas.get("deals"))["renewal_date"]
    assert renewal.type == "date"
    # HubSpot stores a date as midnight UTC and takes it back in that form.
    assert validate_value(renewal, "2024-06-30T00:00:00.000Z") is None
    assert validate_value(renewal, "2024-06-30T02:00:00+02:00") is None
    not_midnight = validate_value(renewal, "2024-06-30T10:00:00Z")
    assert not_midnight is not None and "midnight UTC" in not_midnight


async def test_datetimes(hs_schemas: SchemaCache, sf_schemas: SchemaCache) -> None:
    closedate = (await hs_schemas.get("deals"))["closedate"]
    assert closedate.type == "datetime"
    for good in (
        "2024-06-30T14:00:00Z",
        "2024-06-30T14:00:00.123+02:00",
        "2024-06-30",
        1719756000000,
        "1719756000000",
    ):
        assert validate_value(closedate, good) is None, good
    for bad in ("next week", "2024-13-01T00:00:00Z", True, 1.5, "30/06/2024 14:00"):
        message = validate_value(closedate, bad)
        assert message is not None and "ISO 8601" in message, bad
    # Salesforce's datetime fields go through the same rules.
    created = (await sf_schemas.get("Opportunity"))["CreatedDate"]
    assert validate_value(created, "2024-06-30T14:00:00.000+0000") is None


async def test_booleans(sf_schemas: SchemaCache, hs_schemas: SchemaCache) -> None:
    private = (await sf_schemas.get("Opportunity"))["IsPrivate"]
    public = (await hs_schemas.get("companies"))["is_public"]
    for spec in (private, public):
        assert spec.type == "bool"
        for good in (True, False, "true", "FALSE", "True"):
            assert validate_value(spec, good) is None, good
        for bad in ("yes", 1, 0, "1", "Y"):
            message = validate_value(spec, bad)
            assert message is not None and "true or false" in message, bad


async def test_clearing_and_text(hs_schemas: SchemaCache) -> None:
    schema = await hs_schemas.get("deals")
    for name in ("dealstage", "amount", "closedate", "renewal_date", "description"):
        assert validate_value(schema[name], None) is None
        assert validate_value(schema[name], "") is None
    description = schema["description"]
    for good in ("anything", 42, 4.2, True):
        assert validate_value(description, good) is None
    refused = validate_value(description, ["a", "list"])
    assert refused is not None and "single value" in refused


def test_a_long_option_list_is_capped() -> None:
    spec = FieldSchema(
        "industry",
        "Industry",
        "enumeration",
        True,
        tuple(FieldOption(f"IND_{n:02d}", f"Industry {n}") for n in range(50)),
    )

    message = validate_value(spec, "FARMING")

    assert message is not None
    assert '"IND_29"' in message and '"IND_30"' not in message
    assert message.endswith("… and 20 more")
    # No options known (HubSpot's owner ids live elsewhere): nothing to refuse.
    assert (
        validate_value(FieldSchema("hubspot_owner_id", "Owner", "enumeration", True), "7") is None
    )


def test_multiple_choice_values_are_options_joined_by_semicolons() -> None:
    spec = FieldSchema(
        "regions",
        "Regions",
        "enumeration",
        True,
        (FieldOption("EU", "EU"), FieldOption("US", "US")),
    )
    assert validate_value(spec, "EU;US") is None
    assert validate_value(spec, "EU;APAC") is not None


async def test_validate_changes(hs_schemas: SchemaCache, sf_schemas: SchemaCache) -> None:
    deals = await hs_schemas.get("deals")

    problems = validate_changes(
        deals,
        {
            "description": "fine",
            "amount": "lots",
            "dealstag": "closedwon",
            "hs_is_closed": "true",
            "dealstage": "closedwon",
            "closedate": None,
        },
        object_type="deals",
    )

    assert set(problems) == {"amount", "dealstag", "hs_is_closed"}
    assert "takes a number" in problems["amount"]
    assert problems["dealstag"].startswith("field dealstag does not exist on deals")
    assert "did you mean dealstage" in problems["dealstag"]
    assert problems["hs_is_closed"] == "field hs_is_closed is read-only in the CRM"

    opportunity = await sf_schemas.get("Opportunity")
    sf_problems = validate_changes(
        opportunity, {"stagename": "Closed Won", "Probability": 50}, object_type="Opportunity"
    )
    assert sf_problems == {
        "stagename": "field stagename does not exist on Opportunity (did you mean StageName?)",
        "Probability": "field Probability is read-only in the CRM",
    }


async def test_values_agree_with_what_hubspot_accepts(
    hubspot: HubSpotStandIn, hs_crm: HubSpotCRM, hs_schemas: SchemaCache
) -> None:
    """What validate_value accepts, the HubSpot stand-in writes; what it refuses, HubSpot refuses."""
    schema = await hs_schemas.get("deals")
    cases: list[tuple[str, Any]] = [
        ("dealstage", "closedwon"),
        ("dealstage", "Closed Won"),
        ("amount", "1200.50"),
        ("amount", "twelve"),
        ("amount", math.inf),
        ("renewal_date", "2025-01-31"),
        ("renewal_date", "2025-01-31T00:00:00Z"),
        ("renewal_date", "2025-01-31T09:30:00Z"),
        ("renewal_date", "2025-02-30"),
        ("closedate", "2025-01-31T09:30:00Z"),
        ("closedate", 1738315800000),
        ("closedate", "end of month"),
        ("hs_priority", "high"),
        ("hs_priority", "urgent"),
        ("amount", None),
    ]
    record_id = "9001"
    for name, value in cases:
        expected_ok = validate_value(schema[name], value) is None
        outcome = (await hs_crm.update_records("deals", {record_id: {name: value}}))[record_id]
        assert (outcome is None) == expected_ok, (name, value, outcome)
        if outcome is not None:
            assert outcome.kind is CRMErrorKind.VALIDATION
