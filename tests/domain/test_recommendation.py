"""The recommendation policy (SPEC §8) as a pure function: every row, boost, clamp, nulls."""

from __future__ import annotations

import json

import pytest

from pipelines.domain.recommendation import (
    ANY,
    DEFAULT_POLICY,
    DEFAULT_RULES,
    PolicyError,
    PolicyRule,
    RecommendationPolicy,
    policy_from_json,
    policy_from_mapping,
)


@pytest.mark.parametrize(
    ("group", "risk", "probability", "window"),
    [
        ("Whale", "High-Risk", 0.75, "next 2 hours"),
        ("Medium", "Low-Risk", 0.50, "next 6 hours"),
        ("Low", "High-Risk", 0.25, "next 24 hours"),
        ("Low", "Low-Risk", 0.25, "next 24 hours"),
        ("Low", "Unknown", 0.25, "next 24 hours"),
        ("Whale", "Low-Risk", 0.10, "any time"),
        ("Whale", "Unknown", 0.10, "any time"),
        ("Medium", "High-Risk", 0.10, "any time"),
        ("High Engaged", "High-Risk", 0.10, "any time"),
        ("High Engaged", "Low-Risk", 0.10, "any time"),
    ],
)
def test_every_policy_row_without_streak(group, risk, probability, window):
    rec = DEFAULT_POLICY.recommend(group, risk, 0)
    assert rec.recommended_reward_probability == probability
    assert rec.recommended_time_window == window
    assert (rec.rfm_group, rec.risk_profile, rec.streak_count) == (group, risk, 0)


def test_null_group_is_low_and_null_risk_is_unknown():
    rec = DEFAULT_POLICY.recommend(None, None, 0)
    assert (rec.rfm_group, rec.risk_profile) == ("Low", "Unknown")
    assert rec.recommended_reward_probability == 0.25
    assert rec.recommended_time_window == "next 24 hours"
    # a null group with a risk still falls into (Low, any)
    assert DEFAULT_POLICY.recommend(None, "High-Risk", 0).recommended_reward_probability == 0.25
    # null risk never matches a specific risk row
    whale = DEFAULT_POLICY.recommend("Whale", None, 0)
    assert (whale.risk_profile, whale.recommended_reward_probability) == ("Unknown", 0.10)


@pytest.mark.parametrize(
    ("group", "risk", "streak", "expected"),
    [
        ("Whale", "High-Risk", 1, 0.76),
        ("Whale", "High-Risk", 7, 0.82),
        ("Medium", "Low-Risk", 3, 0.53),
        ("Low", "Unknown", 10, 0.35),
        ("Medium", "Medium-Risk", 5, 0.15),
        ("Whale", "High-Risk", 20, 0.95),  # exactly at the cap
        ("Whale", "High-Risk", 21, 0.95),  # capped
        ("Low", "Unknown", 10**12, 0.95),  # huge streak, still capped
        ("Medium", "Low-Risk", 45, 0.95),
    ],
)
def test_streak_boost_and_cap(group, risk, streak, expected):
    rec = DEFAULT_POLICY.recommend(group, risk, streak)
    assert rec.recommended_reward_probability == expected
    assert rec.streak_count == streak


def test_negative_streak_counts_as_zero():
    rec = DEFAULT_POLICY.recommend("Whale", "High-Risk", -5)
    assert (rec.streak_count, rec.recommended_reward_probability) == (0, 0.75)


def test_floor_applies_to_a_low_base():
    policy = RecommendationPolicy(rules=(PolicyRule(ANY, ANY, 0.01, "later"),))
    assert policy.recommend("Low", None, 0).recommended_reward_probability == 0.05
    assert policy.recommend("Low", None, 3).recommended_reward_probability == 0.05
    assert policy.recommend("Low", None, 5).recommended_reward_probability == 0.06


def test_rounding_to_four_places():
    policy = RecommendationPolicy(streak_boost=0.00333)
    rec = policy.recommend("Whale", "High-Risk", 1)
    assert rec.recommended_reward_probability == 0.7533


def test_first_match_wins():
    rules = (
        PolicyRule("Whale", ANY, 0.6, "soon"),
        PolicyRule("Whale", "High-Risk", 0.9, "never reached"),
        PolicyRule(ANY, ANY, 0.1, "any time"),
    )
    rec = RecommendationPolicy(rules=rules).recommend("Whale", "High-Risk", 0)
    assert (rec.recommended_reward_probability, rec.recommended_time_window) == (0.6, "soon")


def test_default_table_is_the_spec_table():
    assert [
        (r.rfm_group, r.risk_profile, r.base_probability, r.time_window) for r in DEFAULT_RULES
    ] == [
        ("Whale", "High-Risk", 0.75, "next 2 hours"),
        ("Medium", "Low-Risk", 0.50, "next 6 hours"),
        ("Low", "*", 0.25, "next 24 hours"),
        ("*", "*", 0.10, "any time"),
    ]


def test_policy_from_json_round_trip():
    text = json.dumps(
        {
            "rules": [
                {
                    "rfm_group": "Whale",
                    "risk_profile": "*",
                    "base_probability": 0.8,
                    "time_window": "now",
                },
                {"rfm_group": "*", "risk_profile": "*", "base_probability": 0, "time_window": "x"},
            ],
            "streak_boost": 0.02,
            "cap": 0.9,
        }
    )
    policy = policy_from_json(text)
    assert policy.recommend("Whale", None, 3).recommended_reward_probability == 0.86
    assert policy.recommend("Whale", None, 10).recommended_reward_probability == 0.9
    assert policy.recommend("Low", None, 0).recommended_reward_probability == 0.05


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a JSON object"),
        ({}, "rules must be a list"),
        ({"rules": []}, "at least one rule"),
        ({"rules": [], "bogus": 1}, "unknown policy key 'bogus'"),
        ({"rules": ["x"]}, r"rules\[0\] must be an object"),
        ({"rules": [{"rfm_group": "*"}]}, "exactly the keys"),
        (
            {
                "rules": [
                    {
                        "rfm_group": "Low",
                        "risk_profile": "*",
                        "base_probability": 0.2,
                        "time_window": "x",
                    }
                ]
            },
            "last rule must match anything",
        ),
        (
            {
                "rules": [
                    {
                        "rfm_group": "*",
                        "risk_profile": "*",
                        "base_probability": 1.5,
                        "time_window": "x",
                    }
                ]
            },
            r"rules\[0\].base_probability",
        ),
        (
            {
                "rules": [
                    {
                        "rfm_group": "*",
                        "risk_profile": "*",
                        "base_probability": True,
                        "time_window": "x",
                    }
                ]
            },
            r"rules\[0\].base_probability",
        ),
        (
            {
                "rules": [
                    {
                        "rfm_group": "",
                        "risk_profile": "*",
                        "base_probability": 0.1,
                        "time_window": "x",
                    }
                ]
            },
            r"rules\[0\].rfm_group",
        ),
        (
            {
                "rules": [
                    {
                        "rfm_group": "*",
                        "risk_profile": "*",
                        "base_probability": 0.1,
                        "time_window": "x",
                    }
                ],
                "floor": 0.9,
                "cap": 0.5,
            },
            "floor must not be greater than cap",
        ),
        (
            {
                "rules": [
                    {
                        "rfm_group": "*",
                        "risk_profile": "*",
                        "base_probability": 0.1,
                        "time_window": "x",
                    }
                ],
                "cap": "high",
            },
            "cap must be a number",
        ),
    ],
)
def test_malformed_policies_are_refused_with_the_place(data, message):
    with pytest.raises(PolicyError, match=message):
        policy_from_mapping(data)


def test_policy_from_json_rejects_bad_json():
    with pytest.raises(PolicyError, match="not valid JSON"):
        policy_from_json("{rules:")
