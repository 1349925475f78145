"""The price table: the shipped file, matching, fallbacks, exact costs and refused files."""

from __future__ import annotations

import configparser
import json
from decimal import Decimal
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from linkrouter.pricing import PRICE_FIELDS, Price, PriceTable, PriceTableError
from linkrouter.tokenusage import Usage, UsageTally

from ..harness import RESPONSES
from .test_tokenusage import recorded_body, sse_events

ROOT = Path(__file__).resolve().parents[2]


def row(i: float, o: float, w5: float, w1: float, r: float) -> dict[str, float]:
    return dict(zip(PRICE_FIELDS, (i, o, w5, w1, r)))


def table(rows: dict[str, dict[str, float]]) -> PriceTable:
    return PriceTable.parse(json.dumps(rows), source="test.json")


#: A table whose prices make every kind of token visible in a cost.
TEST_TABLE = {
    "claude-opus-5-5": row(7, 11, 13, 17, 0.19),
    "claude-opus-4-1*": row(15, 75, 18.75, 30, 1.5),
    "claude-sonnet-4-*": row(3, 15, 3.75, 6, 0.3),
    "claude-haiku-4-5*": row(1, 5, 1.25, 2, 0.1),
}


class ShippedTableTests(SynchronousTestCase):
    """linkrouter/prices.json as shipped."""

    def setUp(self) -> None:
        self.table = PriceTable.shipped()

    def test_loads_and_every_row_validates(self) -> None:
        """The shipped file loads, and loading it again from its path gives the same rows."""
        self.assertGreater(len(self.table.rows), 20)
        again = PriceTable.load(ROOT / "linkrouter" / "prices.json")
        self.assertEqual(again.rows, self.table.rows)
        for each in self.table.rows:
            for name in PRICE_FIELDS:
                self.assertGreaterEqual(getattr(each.price, name), 0, each.pattern)

    def test_cache_prices_follow_input(self) -> None:
        """
        Catches typos: every row's 1 h write is 2x its input, its 5 m write 1.25x (Haiku 3
        is published rounded, $0.30), output is above input and a cache read below it.
        """
        for each in self.table.rows:
            price = each.price
            self.assertEqual(price.cache_write_1h, 2 * price.input, each.pattern)
            if each.pattern != "*claude-3-haiku*":
                self.assertEqual(price.cache_write_5m, Decimal("1.25") * price.input, each.pattern)
            self.assertGreater(price.output, price.input, each.pattern)
            self.assertLess(price.cache_read, price.input, each.pattern)

    def test_published_prices(self) -> None:
        """Model ids as each platform spells them get their published input/output price."""
        expected = {
            "claude-opus-5-5": (4, 20),
            "us.anthropic.claude-opus-5-5": (4, 20),
            "claude-opus-5": (5, 25),
            "claude-opus-4-8": (5, 25),
            "claude-opus-4-5-20251101": (5, 25),
            "anthropic.claude-opus-4-6-v1": (5, 25),
            "claude-opus-4-1-20250805": (15, 75),
            "claude-opus-4-20250514": (15, 75),
            "claude-opus-4@20250514": (15, 75),
            "claude-opus-4-0": (15, 75),
            "claude-3-opus-20240229": (15, 75),
            "claude-fable-5-1": (10, 50),
            "claude-fable-5": (10, 50),
            "claude-sonnet-5-5": (2, 10),
            "claude-sonnet-5": (2, 10),
            "claude-sonnet-4-5@20250929": (3, 15),
            "anthropic.claude-sonnet-4-5-20250929-v1:0": (3, 15),
            "claude-sonnet-4-20250514": (3, 15),
            "claude-3-7-sonnet-20250219": (3, 15),
            "claude-haiku-5-5": (Decimal("0.1"), Decimal("0.5")),
            "claude-haiku-4-5-20251001": (1, 5),
            "claude-3-5-haiku-20241022": (Decimal("0.8"), 4),
            "claude-3-haiku-20240307": (Decimal("0.25"), Decimal("1.25")),
        }
        for model, (input_price, output_price) in expected.items():
            price, matched = self.table.price_for(model)
            self.assertTrue(matched, model)
            self.assertEqual((price.input, price.output), (input_price, output_price), model)

    def test_cache_read_exceptions(self) -> None:
        """The models whose cache reads are not 0.1x input have their own published rate."""
        reads = {
            "claude-fable-5-1": Decimal("0.25"),
            "claude-fable-5": 1,
            "claude-opus-5-5": Decimal("0.2"),
            "claude-sonnet-5-5": Decimal("0.1"),
            "claude-haiku-5-5": Decimal("0.01"),
            "claude-3-haiku-20240307": Decimal("0.03"),
        }
        for model, read in reads.items():
            self.assertEqual(self.table.price_for(model)[0].cache_read, read, model)

    def test_listed_models_match(self) -> None:
        """Every model the recorded GET /v1/models lists matches a row."""
        listed = json.loads((RESPONSES / "anthropic-models.json").read_text())["body"]["data"]
        for model in listed:
            self.assertTrue(self.table.price_for(model["id"])[1], model["id"])

    def test_next_minor_version_is_a_guess(self) -> None:
        """
        A version the table does not know (the recorded claude-fable-5-2) is not taken for
        its predecessor: it is priced by its family and reported as unmatched.
        """
        price, matched = self.table.price_for("claude-fable-5-2")
        self.assertFalse(matched)
        self.assertEqual(price, self.table.price_for("claude-fable-5-1")[0])
        self.assertFalse(self.table.price_for("claude-opus-5-6")[1])

    def test_package_data(self) -> None:
        """setup.cfg ships prices.json with the package, so PriceTable.shipped works installed."""
        config = configparser.ConfigParser()
        config.read(ROOT / "setup.cfg")
        shipped = [name.strip() for name in config["options.package_data"]["linkrouter"].split(",")]
        self.assertIn("prices.json", shipped)


class MatchingTests(SynchronousTestCase):
    """Which row prices a model."""

    def test_first_match_in_file_order(self) -> None:
        """The first matching pattern wins, so the order of the file decides."""
        old, new = row(15, 75, 18.75, 30, 1.5), row(5, 25, 6.25, 10, 0.5)
        specific_first = table({"claude-opus-4-1*": old, "claude-opus-*": new})
        general_first = table({"claude-opus-*": new, "claude-opus-4-1*": old})
        model = "claude-opus-4-1-20250805"
        self.assertEqual(specific_first.price_for(model)[0].input, 15)
        self.assertEqual(general_first.price_for(model)[0].input, 5)
        self.assertTrue(general_first.price_for(model)[1])

    def test_whole_id_matched(self) -> None:
        """A pattern matches the whole model id, not a part of it."""
        prices = table({"claude-opus-4": row(15, 75, 18.75, 30, 1.5), "*": row(1, 2, 1.25, 2, 0.1)})
        self.assertEqual(prices.price_for("claude-opus-4")[0].input, 15)
        self.assertEqual(prices.price_for("claude-opus-4-5")[0].input, 1)
        self.assertEqual(prices.price_for("x.claude-opus-4")[0].input, 1)

    def test_family_fallback(self) -> None:
        """An unmatched id naming a family gets that family's first row, flagged unmatched."""
        prices = table(TEST_TABLE)
        for model, first in (
            ("claude-opus-9", "claude-opus-5-5"),
            ("eu.anthropic.Claude-Sonnet-7-v2:0", "claude-sonnet-4-*"),
            ("claude-next-haiku", "claude-haiku-4-5*"),
        ):
            price, matched = prices.price_for(model)
            self.assertFalse(matched, model)
            expected = next(each.price for each in prices.rows if each.pattern == first)
            self.assertEqual(price, expected, model)

    def test_most_expensive_fallback(self) -> None:
        """An id naming no known family gets the most expensive row, flagged unmatched."""
        prices = table(TEST_TABLE)
        for model in ("claude-fable-5-2", "gpt-4o", ""):
            price, matched = prices.price_for(model)
            self.assertFalse(matched, model)
            self.assertEqual(price.output, 75, model)

    def test_most_expensive_breaks_ties_on_input(self) -> None:
        """Two rows with the same output price: the one with the higher input is dearer."""
        prices = table(
            {"a": row(1, 10, 1, 1, 1), "b": row(2, 10, 1, 1, 1), "c": row(9, 9, 9, 9, 9)}
        )
        self.assertEqual(prices.most_expensive.input, 2)


class CostTests(SynchronousTestCase):
    """Costs of recorded usage, computed exactly."""

    def setUp(self) -> None:
        self.prices = table(TEST_TABLE)

    def test_json_answer(self) -> None:
        """21 input and 14 output tokens of claude-opus-5-5 at $7 and $11 per million."""
        tally = UsageTally()
        tally.body(recorded_body("anthropic-messages.json"))
        expected = (21 * Decimal(7) + 14 * Decimal(11)) / 1_000_000
        self.assertEqual(self.prices.cost("claude-opus-5-5", tally.usage), expected)
        self.assertEqual(expected, Decimal("0.000301"))

    def test_sse_stream(self) -> None:
        """The stream's message_start and message_delta cost what the JSON answer costs."""
        tally = UsageTally()
        for event in sse_events("anthropic-messages-stream.sse"):
            tally.event(event)
        self.assertEqual(self.prices.cost("claude-opus-5-5", tally.usage), Decimal("0.000301"))

    def test_every_kind_of_token(self) -> None:
        """Input, output, cache reads, 5 m and 1 h writes are each priced at their rate."""
        usage = recorded_body("anthropic-messages.json")["usage"]
        usage.update(
            cache_read_input_tokens=1000,
            cache_creation_input_tokens=300,
            cache_creation={"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 100},
        )
        tally = UsageTally()
        tally.report(usage)
        # 21*7 + 14*11 + 1000*0.19 + 200*13 + 100*17 = 147 + 154 + 190 + 2600 + 1700
        self.assertEqual(self.prices.cost("claude-opus-5-5", tally.usage), Decimal("0.004791"))

    def test_each_rate_alone(self) -> None:
        """One million tokens of one kind costs exactly that kind's price."""
        price = self.prices.price_for("claude-opus-4-1")[0]
        million = 1_000_000
        for usage, expected in (
            (Usage(input_tokens=million), "15"),
            (Usage(output_tokens=million), "75"),
            (Usage(cache_write_5m_tokens=million), "18.75"),
            (Usage(cache_write_1h_tokens=million), "30"),
            (Usage(cache_read_tokens=million), "1.5"),
            (Usage(), "0"),
        ):
            self.assertEqual(price.cost(usage), Decimal(expected), usage)

    def test_sum_of_costs(self) -> None:
        """The cost of a sum of usages is the sum of their costs (nothing is rounded)."""
        price = Price(*(Decimal(x) for x in ("3", "15", "3.75", "6", "0.3")))
        first, second = Usage(1, 2, 3, 4, 5), Usage(7, 11, 13, 17, 19)
        self.assertEqual(price.cost(first + second), price.cost(first) + price.cost(second))


class MalformedFileTests(SynchronousTestCase):
    """A price file that cannot be used is refused with a message naming what is wrong."""

    def refused(self, text: str) -> str:
        error = self.assertRaises(PriceTableError, PriceTable.parse, text, "bad.json")
        self.assertIsInstance(error, ValueError)
        message = str(error)
        self.assertIn("bad.json", message)
        return message

    def good(self) -> dict[str, float]:
        return row(3, 15, 3.75, 6, 0.3)

    def test_not_an_object(self) -> None:
        """The file must be a JSON object."""
        for text, kind in (("[]", "list"), ('"x"', "string"), ("3", "number"), ("null", "null")):
            message = self.refused(text)
            self.assertIn("JSON object", message)
            self.assertIn(kind, message)

    def test_not_json(self) -> None:
        """Text that is not JSON is refused as such."""
        self.assertIn("not valid JSON", self.refused('{"claude-*": {'))

    def test_empty(self) -> None:
        """A table with no rows could price nothing."""
        self.assertIn("no rows", self.refused("{}"))

    def test_row_not_an_object(self) -> None:
        """Each pattern maps to an object of prices."""
        message = self.refused(json.dumps({"claude-*": 3}))
        self.assertIn("'claude-*'", message)
        self.assertIn("input", message)

    def test_bad_values(self) -> None:
        """Non-numeric, negative and non-finite prices name their pattern and field."""
        for bad in ('"3"', "-1", "true", "null", "[1]", "NaN", "Infinity", "-0.01"):
            prices = json.dumps(self.good()).replace('"cache_read": 0.3', f'"cache_read": {bad}')
            message = self.refused(f'{{"claude-sonnet-*": {prices}}}')
            self.assertIn("'claude-sonnet-*'", message)
            self.assertIn("cache_read", message)

    def test_unknown_field(self) -> None:
        """A field that is not a price kind is named (a typo would otherwise be ignored)."""
        message = self.refused(json.dumps({"claude-*": {**self.good(), "cache_write": 4}}))
        self.assertIn("'claude-*'", message)
        self.assertIn("'cache_write' is unknown", message)

    def test_missing_field(self) -> None:
        """Every price kind must be given."""
        for name in PRICE_FIELDS:
            prices = {key: value for key, value in self.good().items() if key != name}
            message = self.refused(json.dumps({"claude-*": prices}))
            self.assertIn("'claude-*'", message)
            self.assertIn(f"{name!r} is missing", message)

    def test_duplicate_field(self) -> None:
        """A field given twice is refused rather than the last one silently winning."""
        text = (
            '{"claude-*": {"input": 1, "output": 2, "cache_write_5m": 1, "cache_write_1h": 2,'
            ' "cache_read": 0.1, "input": 9}}'
        )
        self.assertIn("'input' appears twice", self.refused(text))

    def test_bad_patterns(self) -> None:
        """Empty patterns, spaces, control characters and unclosed '[' are refused."""
        for pattern, why in (
            ("", "empty"),
            ("claude opus", "spaces"),
            ("claude-\u0085opus", "control"),
            ("claude-[opus", "never closed"),
        ):
            message = self.refused(json.dumps({pattern: self.good()}))
            self.assertIn(repr(pattern), message)
            self.assertIn(why, message)

    def test_duplicate_pattern(self) -> None:
        """A pattern given twice is refused; the second row could never apply."""
        good = json.dumps(self.good())
        message = self.refused(f'{{"claude-*": {good}, "claude-*": {good}}}')
        self.assertIn("'claude-*': appears twice", message)

    def test_missing_file(self) -> None:
        """A file that cannot be read is a PriceTableError naming it."""
        path = self.mktemp()
        error = self.assertRaises(PriceTableError, PriceTable.load, path)
        self.assertIn(path, str(error))

    def test_load_reads_a_file(self) -> None:
        """load() reads the file at the path and names it in errors."""
        path = Path(self.mktemp())
        path.write_text(json.dumps({"claude-x": self.good()}))
        self.assertEqual(PriceTable.load(path).price_for("claude-x")[0].output, 15)
        path.write_text(json.dumps({"claude-x": {**self.good(), "output": "cheap"}}))
        error = self.assertRaises(PriceTableError, PriceTable.load, path)
        self.assertIn(str(path), str(error))
        self.assertIn("'output'", str(error))
