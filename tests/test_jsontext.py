"""The JSON text the ledger stores and the API answers reads back as the value it was made from."""

from __future__ import annotations

import json
import random

from bot import jsontext


def _same(a: object, b: object) -> bool:
    """Equal, and of the same types all the way down (1 and 1.0 and True are not the same)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)  # type: ignore[attr-defined]
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    return a == b


def _value(rng: random.Random, depth: int = 0) -> object:
    pick = rng.randrange(9 if depth < 3 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return rng.choice([0, -1, 2**63 - 1, -(2**63), 2**53 + 1, rng.randrange(-(10**12), 10**12)])
    if pick == 3:
        return rng.choice([0.1, -0.0, 1e-05, 1.5e-07, 2.5e-5, 1e16, 1e22, 5e-324, 1.7976931348623157e308,
                           rng.uniform(-1e6, 1e6), rng.random() * 10 ** rng.randrange(-30, 30)])  # fmt: skip
    if pick in (4, 5):
        alphabet = 'ab "\\/\n\t\x00\x1f\x7f\u2028é€😀'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if pick in (6, 7):
        return {str(_value(rng, 3)): _value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_every_json_value_reads_back_as_itself():
    rng = random.Random(7)
    for _ in range(5000):
        value = _value(rng)
        text = jsontext.dumps(value)
        assert _same(json.loads(text), value), (value, text)
        assert _same(json.loads(text), json.loads(json.dumps(value))), (value, text)


def test_what_orjson_refuses_goes_to_the_standard_library_exactly():
    huge = {"amount": 123456789012345678901234567890, "list": [-(2**64)]}
    assert jsontext.dumps(huge) == json.dumps(huge, ensure_ascii=False)
    assert json.loads(jsontext.dumps(huge)) == huge
    keyed = {1: "one", "é": "two"}
    assert jsontext.dumps(keyed) == '{"1": "one", "é": "two"}'


def test_canonical_json_never_changes_for_any_value():
    """Audit hashes and request fingerprints are taken of `canonical_json`: whichever encoder
    writes it, the text must be the standard library's with sorted keys and no spaces."""
    from bot.ledger.repo import canonical_json

    def reference(value: object) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)

    rng = random.Random(11)
    flat = [None, True, False, 0, -7, 2**63 - 1, -(2**63), 2**64, "", 'a "b"\\\n\t\x00\x7f\u2028é😀']
    for _ in range(5000):
        value = _value(rng)
        assert canonical_json(value) == reference(value), value
        keys = ["", "a", "B", "é", "😀", "\uffff", "z" * 3, "\x00"]
        plain = {rng.choice(keys): rng.choice(flat) for _ in range(rng.randrange(6))}
        assert canonical_json(plain) == reference(plain), plain
