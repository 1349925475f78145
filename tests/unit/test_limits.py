"""
Tests for L{linkrouter.limits}: reading a token's limits from JSON strictly (every error
names its field), writing them back, C{--default-limits} and which limits apply.
"""

from __future__ import annotations

import json
from decimal import Decimal

from twisted.trial.unittest import SynchronousTestCase

from linkrouter.limits import (
    MAX_PATTERN_LENGTH,
    MAX_PATTERNS,
    WINDOWS,
    Limits,
    LimitsError,
    effective,
    parse_default_limits,
)

FULL = {
    "rpm": 60,
    "concurrency": 4,
    "budget_usd": {"5h": 10, "1d": 25.5, "7d": 100, "30d": 300},
    "models": ["claude-sonnet-*", "claude-haiku-*"],
}


class FromJSONTests(SynchronousTestCase):
    """L{Limits.from_json} reads valid limits and names the field of invalid ones."""

    def error(self, obj: object, field: str = "limits") -> LimitsError:
        with self.assertRaises(LimitsError) as raised:
            Limits.from_json(obj, field=field)
        return raised.exception

    def assertRefused(self, obj: object, path: str, words: str) -> None:
        e = self.error(obj)
        self.assertEqual(e.field, path)
        self.assertTrue(str(e).startswith(f"{path}: "), str(e))
        self.assertIn(words, e.problem)

    def test_full(self) -> None:
        """Every key is read, budgets as exact Decimals in window order."""
        limits = Limits.from_json(FULL)
        assert limits is not None
        self.assertEqual(limits.rpm, 60)
        self.assertEqual(limits.concurrency, 4)
        self.assertEqual(
            dict(limits.budget_usd),
            {"5h": Decimal(10), "1d": Decimal("25.5"), "7d": Decimal(100), "30d": Decimal(300)},
        )
        self.assertEqual(limits.models, ("claude-sonnet-*", "claude-haiku-*"))

    def test_null_and_empty(self) -> None:
        """C{null} means no limits; C{{}} is limits with nothing limited."""
        self.assertIsNone(Limits.from_json(None))
        empty = Limits.from_json({})
        self.assertEqual(empty, Limits())
        assert empty is not None
        self.assertTrue(empty.allows_model("anything"))
        self.assertFalse(empty.counted)

    def test_round_trip(self) -> None:
        """C{to_json} through JSON text reads back to an equal value, 0.1 exactly."""
        for obj in [FULL, {"rpm": 1}, {"budget_usd": {"1d": 0.1, "30d": 12.34}}, {}]:
            limits = Limits.from_json(obj)
            assert limits is not None
            again = Limits.from_json(json.loads(json.dumps(limits.to_json())))
            self.assertEqual(again, limits)
            self.assertEqual(hash(again), hash(limits))
        limits = Limits.from_json({"budget_usd": {"1d": 0.1}})
        assert limits is not None
        self.assertEqual(limits.budget_usd["1d"], Decimal("0.1"))
        self.assertEqual(limits.to_json(), {"budget_usd": {"1d": 0.1}})

    def test_not_an_object(self) -> None:
        """Limits that are not an object are refused under the field given."""
        e = self.error([1], field="body.limits")
        self.assertEqual(str(e), "body.limits: must be an object (or null for no limits)")

    def test_unknown_key(self) -> None:
        """An unknown key is refused by its path."""
        self.assertRefused({"rpn": 5}, "limits.rpn", "unknown key")

    def test_whole_numbers(self) -> None:
        """rpm and concurrency must be whole numbers from 1 up to a ceiling."""
        for key in ("rpm", "concurrency"):
            path = f"limits.{key}"
            self.assertRefused({key: 0}, path, "at least 1")
            self.assertRefused({key: -3}, path, "at least 1")
            self.assertRefused({key: 2.5}, path, "whole number")
            self.assertRefused({key: "5"}, path, "whole number")
            self.assertRefused({key: True}, path, "whole number")
            self.assertRefused({key: 10**12}, path, "at most")

    def test_budgets(self) -> None:
        """Budgets must be over a known window, and positive finite numbers."""
        self.assertRefused(
            {"budget_usd": {"2d": 5}},
            "limits.budget_usd.2d",
            "unknown window; use 5h, 1d, 7d or 30d",
        )
        self.assertEqual(
            str(self.error({"budget_usd": {"2d": 5}})),
            "limits.budget_usd.2d: unknown window; use 5h, 1d, 7d or 30d",
        )
        path = "limits.budget_usd.1d"
        self.assertRefused({"budget_usd": {"1d": 0}}, path, "more than 0")
        self.assertRefused({"budget_usd": {"1d": -1}}, path, "more than 0")
        self.assertRefused({"budget_usd": {"1d": "25"}}, path, "number of US dollars")
        self.assertRefused({"budget_usd": {"1d": False}}, path, "number of US dollars")
        self.assertRefused({"budget_usd": {"1d": float("inf")}}, path, "finite")
        self.assertRefused({"budget_usd": {"1d": float("nan")}}, path, "finite")
        self.assertRefused({"budget_usd": {"1d": 1e12}}, path, "at most")
        self.assertRefused({"budget_usd": [25]}, "limits.budget_usd", "object of window")

    def test_models(self) -> None:
        """Model patterns must be a non-empty list of short printable strings."""
        self.assertRefused({"models": "claude-*"}, "limits.models", "list of model patterns")
        self.assertRefused({"models": []}, "limits.models", "at least one pattern")
        self.assertRefused(
            {"models": ["a"] * (MAX_PATTERNS + 1)}, "limits.models", f"at most {MAX_PATTERNS}"
        )
        self.assertRefused({"models": ["ok", 3]}, "limits.models[1]", "must be a string")
        self.assertRefused({"models": [""]}, "limits.models[0]", "must not be empty")
        self.assertRefused({"models": ["  "]}, "limits.models[0]", "must not be empty")
        self.assertRefused(
            {"models": ["c" * (MAX_PATTERN_LENGTH + 1)]},
            "limits.models[0]",
            f"at most {MAX_PATTERN_LENGTH} characters",
        )
        self.assertRefused({"models": ["claude\n*"]}, "limits.models[0]", "printable")
        self.assertRefused({"models": [" claude-*"]}, "limits.models[0]", "surrounding")

    def test_model_patterns(self) -> None:
        """Patterns are fnmatch, case-sensitive, on the whole model id; no model passes."""
        limits = Limits(models=("claude-sonnet-*", "claude-3-?-haiku", "claude-[ho]*-4"))
        self.assertTrue(limits.allows_model("claude-sonnet-4-5"))
        self.assertTrue(limits.allows_model("claude-3-5-haiku"))
        self.assertTrue(limits.allows_model("claude-opus-4"))
        self.assertFalse(limits.allows_model("claude-opus-4-1"))
        self.assertFalse(limits.allows_model("Claude-Sonnet-4"))
        self.assertFalse(limits.allows_model("xclaude-sonnet-4"))
        self.assertTrue(limits.allows_model(None))

    def test_windows(self) -> None:
        """The windows and their lengths in seconds."""
        self.assertEqual(dict(WINDOWS), {"5h": 18000, "1d": 86400, "7d": 604800, "30d": 2592000})


class DefaultLimitsTests(SynchronousTestCase):
    """C{--default-limits} and the limits that apply to a token."""

    def test_parse(self) -> None:
        """The flag's JSON is read like a token's limits; null or nothing is no default."""
        self.assertEqual(parse_default_limits('{"rpm": 5}'), Limits(rpm=5))
        self.assertIsNone(parse_default_limits("null"))
        self.assertIsNone(parse_default_limits("  "))

    def test_errors_name_the_flag(self) -> None:
        """Bad JSON or a bad value is one line naming C{--default-limits}."""
        for text, start in [
            ("{rpm: 5}", "--default-limits: is not JSON ("),
            ('{"rpm": 0}', "--default-limits.rpm: must be at least 1"),
            ('{"budget_usd": {"1w": 3}}', "--default-limits.budget_usd.1w: unknown window"),
            ("[1]", "--default-limits: must be an object"),
        ]:
            with self.assertRaises(LimitsError) as raised:
                parse_default_limits(text)
            message = str(raised.exception)
            self.assertTrue(message.startswith(start), message)
            self.assertNotIn("\n", message)

    def test_effective(self) -> None:
        """A token's own limits win; a token without any gets the default."""
        own, default = Limits(rpm=1), Limits(rpm=100)
        self.assertIs(effective(own, default), own)
        self.assertIs(effective(None, default), default)
        self.assertIsNone(effective(None, None))
        # Limits of its own that limit nothing still are its own (an admin's exemption).
        unlimited = Limits()
        self.assertIs(effective(unlimited, default), unlimited)
