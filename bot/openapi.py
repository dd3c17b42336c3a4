"""The OpenAPI 3.1 document of the agent API, built from the same pydantic models the server
validates with, so the document cannot drift from what the server does."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from bot.domain import ErrorBody, ProposalAccepted, ProposalDetail, ProposalIn


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }


@cache
def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [
            (ProposalIn, "validation"),
            (ProposalAccepted, "serialization"),
            (ProposalDetail, "serialization"),
            (ErrorBody, "serialization"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    bearer = [{"agentKey": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CRM write gate: agent API",
            "version": "1",
            "description": (
                "Agents propose CRM writes; the gate classifies each change by tiers.yaml and "
                "commits, routes for review, blocks or shadows it."
            ),
        },
        "paths": {
            "/v1/proposals": {
                "post": {
                    "operationId": "createProposal",
                    "summary": "Propose changes to one CRM record",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                            "description": (
                                "Unique per proposal and agent. A replay with the same body returns "
                                "the first answer and writes nothing; another body is 422."
                            ),
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ProposalIn"}
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "Accepted; each change carries its tier and status.",
                            "headers": {
                                "Idempotent-Replayed": {
                                    "schema": {"type": "string", "enum": ["true"]},
                                    "description": "Present when this is the stored answer to an earlier request.",
                                }
                            },
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ProposalAccepted"}
                                }
                            },
                        },
                        "400": _error("Malformed JSON or a missing Idempotency-Key."),
                        "401": _error("Missing or invalid agent key."),
                        "413": _error("The body is larger than the limit (256 KiB by default)."),
                        "422": _error(
                            "The body does not fit the schema, names an unknown object, has too many "
                            "changes, or reuses an Idempotency-Key with another body."
                        ),
                    },
                }
            },
            "/v1/proposals/{proposal_id}": {
                "get": {
                    "operationId": "getProposal",
                    "summary": "A proposal with the status, before-image and outcome of each change",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "proposal_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The proposal.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ProposalDetail"}
                                }
                            },
                        },
                        "401": _error("Missing or invalid agent key."),
                        "404": _error("No such proposal for this agent."),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "security": [],
                    "responses": {
                        "200": {"description": "Healthy."},
                        "503": {"description": "The database is unreachable."},
                    },
                }
            },
        },
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {
                "agentKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An agent key from `python -m bot agents add NAME`.",
                }
            },
        },
    }
