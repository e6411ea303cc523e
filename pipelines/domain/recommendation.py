"""Reward recommendation policy (SPEC §8): a pure function of (rfm_group, risk_profile, streak).

The policy table lives here and only here (:data:`DEFAULT_RULES`); a deployment can replace
it with a JSON file (``RECOMMENDATION_POLICY_FILE``, parsed by :func:`policy_from_json`)
without touching code. The first rule that matches gives the base probability and the time
window; the streak adds ``streak_boost`` per day; the result is clamped to
``[floor, cap]`` and rounded to 4 places.

A missing ``rfm_group`` counts as ``"Low"`` and a missing ``risk_profile`` as
``"Unknown"`` (before matching, and in the answer).

The module is pure (stdlib only): no I/O, no clock.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "ANY",
    "DEFAULT_POLICY",
    "DEFAULT_RFM_GROUP",
    "DEFAULT_RISK_PROFILE",
    "DEFAULT_RULES",
    "PolicyError",
    "PolicyRule",
    "Recommendation",
    "RecommendationPolicy",
    "policy_from_json",
    "policy_from_mapping",
]

ANY: Final = "*"
DEFAULT_RFM_GROUP: Final = "Low"
DEFAULT_RISK_PROFILE: Final = "Unknown"


class PolicyError(ValueError):
    """A policy definition is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One row of the policy table; ``"*"`` (:data:`ANY`) matches every value."""

    rfm_group: str
    risk_profile: str
    base_probability: float
    time_window: str

    def matches(self, rfm_group: str, risk_profile: str) -> bool:
        return (self.rfm_group == ANY or self.rfm_group == rfm_group) and (
            self.risk_profile == ANY or self.risk_profile == risk_profile
        )


#: The default policy table (SPEC §8), first match wins; the last row must match anything.
DEFAULT_RULES: Final[tuple[PolicyRule, ...]] = (
    PolicyRule("Whale", "High-Risk", 0.75, "next 2 hours"),
    PolicyRule("Medium", "Low-Risk", 0.50, "next 6 hours"),
    PolicyRule("Low", ANY, 0.25, "next 24 hours"),
    PolicyRule(ANY, ANY, 0.10, "any time"),
)


@dataclass(frozen=True, slots=True)
class Recommendation:
    rfm_group: str
    risk_profile: str
    streak_count: int
    recommended_reward_probability: float
    recommended_time_window: str


@dataclass(frozen=True)
class RecommendationPolicy:
    """The policy: rules (first match wins), streak boost and the clamp bounds."""

    rules: tuple[PolicyRule, ...] = DEFAULT_RULES
    streak_boost: float = 0.01
    floor: float = 0.05
    cap: float = 0.95
    _base_cache: dict[tuple[str, str], PolicyRule] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.rules:
            raise PolicyError("rules: at least one rule is required")
        last = self.rules[-1]
        if last.rfm_group != ANY or last.risk_profile != ANY:
            raise PolicyError('rules: the last rule must match anything ("*", "*")')
        for number, rule in enumerate(self.rules):
            if not _is_probability(rule.base_probability):
                raise PolicyError(f"rules[{number}].base_probability must be within [0, 1]")
            if not rule.time_window:
                raise PolicyError(f"rules[{number}].time_window must be a non-empty string")
        for name in ("streak_boost", "floor", "cap"):
            if not _is_probability(getattr(self, name)):
                raise PolicyError(f"{name} must be within [0, 1]")
        if self.floor > self.cap:
            raise PolicyError("floor must not be greater than cap")

    def rule_for(self, rfm_group: str, risk_profile: str) -> PolicyRule:
        """The first rule matching (group, risk); memoized (the inputs are few)."""
        key = (rfm_group, risk_profile)
        rule = self._base_cache.get(key)
        if rule is None:
            rule = next(r for r in self.rules if r.matches(rfm_group, risk_profile))
            if len(self._base_cache) < 4096:
                self._base_cache[key] = rule
        return rule

    def probability(self, base: float, streak: int) -> float:
        value = base + self.streak_boost * max(streak, 0)
        return round(min(max(value, self.floor), self.cap), 4)

    def recommend(
        self, rfm_group: str | None, risk_profile: str | None, streak: int
    ) -> Recommendation:
        """The recommendation for a segment row and a (non-negative) streak count."""
        group = rfm_group if rfm_group is not None else DEFAULT_RFM_GROUP
        risk = risk_profile if risk_profile is not None else DEFAULT_RISK_PROFILE
        streak = max(streak, 0)
        rule = self.rule_for(group, risk)
        return Recommendation(
            rfm_group=group,
            risk_profile=risk,
            streak_count=streak,
            recommended_reward_probability=self.probability(rule.base_probability, streak),
            recommended_time_window=rule.time_window,
        )


def _is_probability(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 1
    )


#: The policy of SPEC §8 with its default table.
DEFAULT_POLICY: Final = RecommendationPolicy()


def policy_from_mapping(data: object) -> RecommendationPolicy:
    """Build a policy from a decoded JSON object::

        {"rules": [{"rfm_group": "Whale", "risk_profile": "High-Risk",
                    "base_probability": 0.75, "time_window": "next 2 hours"},
                   ...,
                   {"rfm_group": "*", "risk_profile": "*",
                    "base_probability": 0.1, "time_window": "any time"}],
         "streak_boost": 0.01, "floor": 0.05, "cap": 0.95}

    Every key but ``rules`` is optional (defaults above). Raises :class:`PolicyError`.
    """
    if not isinstance(data, dict):
        raise PolicyError("policy must be a JSON object")
    unknown = set(data) - {"rules", "streak_boost", "floor", "cap"}
    if unknown:
        raise PolicyError(f"unknown policy key {sorted(unknown)[0]!r}")
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list):
        raise PolicyError("rules must be a list")
    rules = []
    for number, raw in enumerate(raw_rules):
        rules.append(_rule(number, raw))
    numbers: dict[str, Any] = {}
    for name in ("streak_boost", "floor", "cap"):
        if name in data:
            if not _is_probability(data[name]):
                raise PolicyError(f"{name} must be a number within [0, 1]")
            numbers[name] = float(data[name])
    return RecommendationPolicy(rules=tuple(rules), **numbers)


def _rule(number: int, raw: object) -> PolicyRule:
    where = f"rules[{number}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be an object")
    expected = {"rfm_group", "risk_profile", "base_probability", "time_window"}
    if set(raw) != expected:
        raise PolicyError(f"{where} must have exactly the keys {sorted(expected)}")
    for key in ("rfm_group", "risk_profile", "time_window"):
        if not isinstance(raw[key], str) or not raw[key]:
            raise PolicyError(f"{where}.{key} must be a non-empty string")
    if not _is_probability(raw["base_probability"]):
        raise PolicyError(f"{where}.base_probability must be a number within [0, 1]")
    return PolicyRule(
        rfm_group=raw["rfm_group"],
        risk_profile=raw["risk_profile"],
        base_probability=float(raw["base_probability"]),
        time_window=raw["time_window"],
    )


def policy_from_json(text: str | bytes) -> RecommendationPolicy:
    """Parse a policy file's text (see :func:`policy_from_mapping`)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"policy is not valid JSON: {exc}") from None
    return policy_from_mapping(data)
