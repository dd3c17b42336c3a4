"""Demo data for the sandbox: owners who are also Slack users, and a few deals, contacts and
companies. The same people exist in the CRM stand-in (as owners, by email) and in the Slack
stand-in (as users), so a review routes from CRM owner to Slack DM exactly as it would for real.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Person:
    owner_id: str  # CRM owner id (HubSpot owner id)
    sf_user_id: str  # Salesforce User Id (18 chars)
    slack_id: str  # Slack user id
    email: str
    first: str
    last: str

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"


OWNERS: tuple[Person, ...] = (
    Person("101", "005000000000001AAA", "U0AVA", "ava.reed@example.com", "Ava", "Reed"),
    Person("102", "005000000000002AAA", "U0BEN", "ben.okafor@example.com", "Ben", "Okafor"),
    Person("103", "005000000000003AAA", "U0CHLOE", "chloe.martin@example.com", "Chloe", "Martin"),
)

# Slack users who are not CRM owners.
OPS_USER = Person("", "", "U0OPS", "olivia.ops@example.com", "Olivia", "Ops")
OUTSIDER = Person("", "", "U0OUT", "sam.outsider@example.com", "Sam", "Outsider")

SLACK_USERS: tuple[Person, ...] = (*OWNERS, OPS_USER, OUTSIDER)

ALERTS_CHANNEL = "C0ALERTS"
ALERTS_CHANNEL_NAME = "crm-agent-alerts"
FALLBACK_CHANNEL = "C0REVIEW"
FALLBACK_CHANNEL_NAME = "crm-reviews"

DEAL_STAGES: tuple[tuple[str, str], ...] = (
    ("appointmentscheduled", "Appointment Scheduled"),
    ("qualifiedtobuy", "Qualified To Buy"),
    ("presentationscheduled", "Presentation Scheduled"),
    ("decisionmakerboughtin", "Decision Maker Bought-In"),
    ("contractsent", "Contract Sent"),
    ("closedwon", "Closed Won"),
    ("closedlost", "Closed Lost"),
)

# HubSpot-shaped records: object type -> record id -> properties.
DEALS: dict[str, dict[str, str | None]] = {
    "9001": {
        "dealname": "Acme Corp - Platform renewal",
        "dealstage": "qualifiedtobuy",
        "amount": "48000",
        "closedate": "2026-12-19T00:00:00.000Z",
        "description": "Renewal of the platform licence, 3 years.",
        "hs_next_step": "Send security questionnaire",
        "hs_forecast_category": "PIPELINE",
        "hubspot_owner_id": "101",
        "pipeline": "default",
    },
    "9002": {
        "dealname": "Globex - Analytics add-on",
        "dealstage": "presentationscheduled",
        "amount": "12500",
        "closedate": "2027-01-15T00:00:00.000Z",
        "description": "",
        "hs_next_step": "Demo with the data team",
        "hs_forecast_category": "BEST_CASE",
        "hubspot_owner_id": "102",
        "pipeline": "default",
    },
    "9003": {
        "dealname": "Initech - Expansion to EMEA",
        "dealstage": "contractsent",
        "amount": "96000",
        "closedate": "2026-12-31T00:00:00.000Z",
        "description": "EMEA rollout, 400 seats.",
        "hs_next_step": "Legal review of MSA",
        "hs_forecast_category": "COMMIT",
        "hubspot_owner_id": "103",
        "pipeline": "default",
    },
    "9004": {
        "dealname": "Umbrella - Pilot",
        "dealstage": "appointmentscheduled",
        "amount": "5000",
        "closedate": "2027-02-28T00:00:00.000Z",
        "description": None,
        "hs_next_step": None,
        "hs_forecast_category": "PIPELINE",
        "hubspot_owner_id": "101",
        "pipeline": "default",
    },
}

CONTACTS: dict[str, dict[str, str | None]] = {
    "5001": {
        "firstname": "Wile",
        "lastname": "Coyote",
        "email": "wile@acme.example",
        "jobtitle": "Head of Procurement",
        "phone": "+1 555 0100",
        "city": "Phoenix",
        "hs_lead_status": "OPEN",
        "hubspot_owner_id": "101",
    },
    "5002": {
        "firstname": "Hank",
        "lastname": "Scorpio",
        "email": "hank@globex.example",
        "jobtitle": "CEO",
        "phone": None,
        "city": "Cypress Creek",
        "hs_lead_status": "IN_PROGRESS",
        "hubspot_owner_id": "102",
    },
}

COMPANIES: dict[str, dict[str, str | None]] = {
    "7001": {
        "name": "Acme Corp",
        "domain": "acme.example",
        "industry": "COMPUTER_SOFTWARE",
        "numberofemployees": "1200",
        "city": "Phoenix",
        "hubspot_owner_id": "101",
    },
    "7002": {
        "name": "Globex",
        "domain": "globex.example",
        "industry": None,
        "numberofemployees": "300",
        "city": "Cypress Creek",
        "hubspot_owner_id": "102",
    },
}

RECORDS: dict[str, dict[str, dict[str, str | None]]] = {
    "deals": DEALS,
    "contacts": CONTACTS,
    "companies": COMPANIES,
}
