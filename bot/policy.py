"""tiers.yaml -> Policy: which tier and mode apply to each field and activity of each object.

Default deny: an object or field that the file does not list is `read_only`. A malformed file
raises `PolicyError` whose message names the file, the line and the problem.

File shape::

    version: 1
    gate:                       # optional
      shadow_all: false         # every field in shadow mode, whatever its own mode
      promotion: {min_samples: 30, min_precision: 0.9}
    hubspot:
      deals:
        owner_field: hubspot_owner_id
        name_field: dealname
        fields:
          description: autonomous
          dealstage: {tier: reviewed, mode: shadow}
        activities:
          note: autonomous
          task: reviewed
    salesforce:
      Opportunity: {...}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from bot.domain import Mode, Tier

CRMS = ("hubspot", "salesforce")
ACTIVITY_KINDS = ("note", "task")


class PolicyError(Exception):
    """tiers.yaml is malformed; the message is `file:line: problem`."""


@dataclass(frozen=True)
class PromotionGate:
    min_samples: int = 30
    min_precision: float = 0.9


@dataclass(frozen=True)
class Rule:
    tier: Tier = Tier.READ_ONLY
    mode: Mode = Mode.LIVE
    promotion: PromotionGate = PromotionGate()


DENY = Rule()


@dataclass(frozen=True)
class ObjectPolicy:
    name: str
    owner_field: str | None = None
    name_field: str | None = None
    fields: dict[str, Rule] = field(default_factory=dict)
    activities: dict[str, Rule] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    objects: dict[str, dict[str, ObjectPolicy]]  # crm -> object -> policy
    shadow_all: bool = False
    source: str = "<memory>"

    def object(self, crm: str, object_type: str) -> ObjectPolicy | None:
        return self.objects.get(crm, {}).get(object_type)

    def classify(self, crm: str, object_type: str, field_name: str) -> Rule:
        obj = self.object(crm, object_type)
        rule = obj.fields.get(field_name, DENY) if obj else DENY
        return self._shadowed(rule)

    def classify_activity(self, crm: str, object_type: str, kind: str) -> Rule:
        obj = self.object(crm, object_type)
        rule = obj.activities.get(kind, DENY) if obj else DENY
        return self._shadowed(rule)

    def _shadowed(self, rule: Rule) -> Rule:
        if self.shadow_all and rule.tier != Tier.READ_ONLY and rule.mode != Mode.SHADOW:
            return Rule(rule.tier, Mode.SHADOW, rule.promotion)
        return rule

    def listed_fields(self, crm: str) -> list[tuple[str, str, Rule]]:
        return [
            (obj_name, field_name, rule)
            for obj_name, obj in self.objects.get(crm, {}).items()
            for field_name, rule in obj.fields.items()
        ]


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{path}: file not found (set TIERS_FILE to the policy file)") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_policy(text, str(path))


def parse_policy(text: str, source: str = "tiers.yaml") -> Policy:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise PolicyError(f"{source}:{line}: invalid YAML: {exc.problem}") from None
    return _Parser(source).policy(root)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: Node, problem: str) -> PolicyError:
        return PolicyError(f"{self.source}:{node.start_mark.line + 1}: {problem}")

    def mapping(self, node: Node, what: str) -> list[tuple[str, Node, Node]]:
        if not isinstance(node, MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        seen: set[str] = set()
        items: list[tuple[str, Node, Node]] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise self.fail(key_node, f"keys of {what} must be plain names")
            key = str(key_node.value)
            if key in seen:
                raise self.fail(key_node, f"duplicate key {key!r} in {what}")
            seen.add(key)
            items.append((key, key_node, value_node))
        return items

    def scalar(self, node: Node, what: str) -> str:
        if not isinstance(node, ScalarNode):
            raise self.fail(node, f"{what} must be a single value")
        return str(node.value)

    def policy(self, root: Node | None) -> Policy:
        if root is None:
            raise PolicyError(f"{self.source}:1: the file is empty")
        objects: dict[str, dict[str, ObjectPolicy]] = {}
        shadow_all = False
        gate_default = PromotionGate()
        version_seen = False
        items = self.mapping(root, "the file")
        # `gate` first: its promotion default applies to every field.
        for key, _, value in items:
            if key == "gate":
                shadow_all, gate_default = self.gate(value)
        for key, key_node, value in items:
            if key == "version":
                if self.scalar(value, "version") != "1":
                    raise self.fail(value, "unsupported version (expected 1)")
                version_seen = True
            elif key == "gate":
                continue
            elif key in CRMS:
                objects[key] = self.crm(value, key, gate_default)
            else:
                raise self.fail(
                    key_node,
                    f"unknown section {key!r} (expected version, gate, hubspot, salesforce)",
                )
        if not version_seen:
            raise PolicyError(f"{self.source}:1: missing 'version: 1'")
        return Policy(objects=objects, shadow_all=shadow_all, source=self.source)

    def gate(self, node: Node) -> tuple[bool, PromotionGate]:
        shadow_all = False
        promotion = PromotionGate()
        for key, key_node, value in self.mapping(node, "gate"):
            if key == "shadow_all":
                shadow_all = self.boolean(value, "gate.shadow_all")
            elif key == "promotion":
                promotion = self.promotion(value, PromotionGate())
            else:
                raise self.fail(
                    key_node, f"unknown gate setting {key!r} (expected shadow_all, promotion)"
                )
        return shadow_all, promotion

    def boolean(self, node: Node, what: str) -> bool:
        text = self.scalar(node, what).lower()
        if text in ("true", "yes", "on"):
            return True
        if text in ("false", "no", "off"):
            return False
        raise self.fail(node, f"{what} must be true or false")

    def promotion(self, node: Node, default: PromotionGate) -> PromotionGate:
        min_samples, min_precision = default.min_samples, default.min_precision
        for key, key_node, value in self.mapping(node, "promotion"):
            text = self.scalar(value, f"promotion.{key}")
            try:
                if key == "min_samples":
                    min_samples = int(text)
                    if min_samples < 1:
                        raise ValueError
                elif key == "min_precision":
                    min_precision = float(text)
                    if not 0 < min_precision <= 1:
                        raise ValueError
                else:
                    raise self.fail(key_node, f"unknown promotion setting {key!r}")
            except ValueError:
                raise self.fail(
                    value,
                    f"promotion.{key} must be a positive whole number"
                    if key == "min_samples"
                    else f"promotion.{key} must be a number in (0, 1]",
                ) from None
        return PromotionGate(min_samples, min_precision)

    def crm(self, node: Node, crm: str, gate: PromotionGate) -> dict[str, ObjectPolicy]:
        return {
            name: self.object(value, f"{crm}.{name}", name, gate)
            for name, _, value in self.mapping(node, crm)
        }

    def object(self, node: Node, where: str, name: str, gate: PromotionGate) -> ObjectPolicy:
        owner_field = name_field = None
        fields: dict[str, Rule] = {}
        activities: dict[str, Rule] = {}
        for key, key_node, value in self.mapping(node, where):
            if key == "owner_field":
                owner_field = self.scalar(value, f"{where}.owner_field")
            elif key == "name_field":
                name_field = self.scalar(value, f"{where}.name_field")
            elif key == "fields":
                for fname, _, fvalue in self.mapping(value, f"{where}.fields"):
                    fields[fname] = self.rule(fvalue, f"{where}.fields.{fname}", gate)
            elif key == "activities":
                for kind, kind_node, kvalue in self.mapping(value, f"{where}.activities"):
                    if kind not in ACTIVITY_KINDS:
                        raise self.fail(
                            kind_node, f"unknown activity kind {kind!r} (expected note, task)"
                        )
                    activities[kind] = self.rule(kvalue, f"{where}.activities.{kind}", gate)
            else:
                raise self.fail(
                    key_node,
                    f"unknown setting {key!r} in {where} "
                    "(expected owner_field, name_field, fields, activities)",
                )
        return ObjectPolicy(name, owner_field, name_field, fields, activities)

    def rule(self, node: Node, where: str, gate: PromotionGate) -> Rule:
        if isinstance(node, ScalarNode):
            return Rule(self.tier(node, where), Mode.LIVE, gate)
        tier: Tier | None = None
        mode = Mode.LIVE
        promotion = gate
        for key, key_node, value in self.mapping(node, where):
            if key == "tier":
                tier = self.tier(value, where)
            elif key == "mode":
                text = self.scalar(value, f"{where}.mode")
                try:
                    mode = Mode(text)
                except ValueError:
                    raise self.fail(
                        value, f"{where}: unknown mode {text!r} (expected live, shadow)"
                    ) from None
            elif key == "promotion":
                promotion = self.promotion(value, gate)
            else:
                raise self.fail(
                    key_node, f"{where}: unknown setting {key!r} (expected tier, mode, promotion)"
                )
        if tier is None:
            raise self.fail(node, f"{where}: missing 'tier'")
        return Rule(tier, mode, promotion)

    def tier(self, node: Node, where: str) -> Tier:
        text = self.scalar(node, where)
        try:
            return Tier(text)
        except ValueError:
            allowed = ", ".join(t.value for t in Tier)
            raise self.fail(
                node, f"{where}: unknown tier {text!r} (expected one of {allowed})"
            ) from None
