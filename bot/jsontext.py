"""JSON text for the ledger's JSON columns and the API's answers.

orjson encodes in a fraction of the standard library's time, and for the values the gate stores
(what `json.loads` of a request gives, CRM values, the gate's own dicts) it writes the same JSON.
What orjson refuses (an integer beyond 64 bits, a dict key that is not a string) goes to the
standard library, which writes it exactly. Non-finite numbers never get here: intake refuses
them (`NaN` is not JSON), and so does the Edit dialog.

Reading stays with the standard library: orjson would turn an integer beyond 64 bits into a
float, silently changing the value an agent proposed.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False)
