# -*- test-case-name: tests.unit.test_pricing -*-
"""
What an answer would have cost on the Anthropic API: a price table and the arithmetic.

The table is a JSON object from fnmatch patterns on the upstream model id to USD per
million tokens::

    {"*claude-opus-4-1*": {"input": 15, "output": 75, "cache_write_5m": 18.75,
                           "cache_write_1h": 30, "cache_read": 1.5}, ...}

The first pattern in file order that matches wins. A model no pattern matches is priced
by its family (the first row whose pattern names the family its id names, e.g. C{opus}),
else by the most expensive row; L{PriceTable.price_for} says whether a pattern matched, so
the caller can count the guesses.

Prices are kept as L{Decimal} (read from the JSON text, so C{18.75} is exactly 18.75) and
costs come out exact; convert at the edge if a float is needed.

Loading reads a file: do it at start-up or in a thread, not on the reactor.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from fnmatch import translate
from importlib import resources
from pathlib import Path
from typing import Any

from attrs import field, frozen

from .tokenusage import Usage

#: The fields every row has, in the order the README lists them.
PRICE_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")

#: Families a model id can name, checked in this order when no pattern matches.
FAMILIES = ("fable", "mythos", "opus", "sonnet", "haiku")

_MILLION = Decimal(1_000_000)
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f]")


class PriceTableError(ValueError):
    """A price file that cannot be used; the message names the file, pattern and field."""


@frozen
class Price:
    """USD per million tokens of each kind."""

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal

    def cost(self, usage: Usage) -> Decimal:
        """USD that C{usage} costs at these prices, exactly."""
        micro = (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_write_5m_tokens * self.cache_write_5m
            + usage.cache_write_1h_tokens * self.cache_write_1h
            + usage.cache_read_tokens * self.cache_read
        )
        return micro / _MILLION

    def _rank(self) -> tuple[Decimal, ...]:
        return (self.output, self.input, self.cache_write_1h, self.cache_write_5m, self.cache_read)


@frozen
class PriceRow:
    """One pattern of the table and its prices."""

    pattern: str
    price: Price
    _regex: re.Pattern[str] = field(eq=False, repr=False)

    def matches(self, model: str) -> bool:
        return self._regex.match(model) is not None


@frozen
class PriceTable:
    """The rows of a price file, in file order. Build it with L{load} or L{shipped}."""

    rows: tuple[PriceRow, ...]
    source: str = "prices"

    @classmethod
    def load(cls, path: str | Path) -> PriceTable:
        """Read and check a price file; L{PriceTableError} says what is wrong with it."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise PriceTableError(f"{path}: cannot read the price file: {e}") from None
        return cls.parse(text, source=str(path))

    @classmethod
    def shipped(cls) -> PriceTable:
        """The table that comes with linkrouter (C{linkrouter/prices.json})."""
        text = resources.files("linkrouter").joinpath("prices.json").read_text("utf-8")
        return cls.parse(text, source="linkrouter/prices.json")

    @classmethod
    def parse(cls, text: str, source: str = "prices") -> PriceTable:
        """Check the JSON text of a price file and build the table."""
        pairs = _decode(text, source)
        if not pairs:
            raise PriceTableError(f"{source}: the price table has no rows")
        seen: set[str] = set()
        rows = []
        for pattern, prices in pairs:
            where = f"{source}: pattern {pattern!r}"
            if pattern in seen:
                raise PriceTableError(f"{where}: appears twice")
            seen.add(pattern)
            regex = _compile(pattern, where)
            rows.append(PriceRow(pattern, _price(prices, where), regex))
        return cls(rows=tuple(rows), source=source)

    def price_for(self, model: str) -> tuple[Price, bool]:
        """
        The price of C{model}, and whether a pattern matched it (C{False}: the price is the
        family's or the most expensive row's, a guess worth counting).
        """
        for row in self.rows:
            if row.matches(model):
                return row.price, True
        lowered = model.lower()
        for family in FAMILIES:
            if family in lowered:
                for row in self.rows:
                    if family in row.pattern.lower():
                        return row.price, False
        return self.most_expensive, False

    def cost(self, model: str, usage: Usage) -> Decimal:
        """USD that C{usage} of C{model} costs; use L{price_for} to learn if it was a guess."""
        return self.price_for(model)[0].cost(usage)

    @property
    def most_expensive(self) -> Price:
        """The row with the highest output price (then input, then the cache prices)."""
        return max((row.price for row in self.rows), key=Price._rank)


class _Object(dict):  # type: ignore[type-arg]
    """A decoded JSON object that remembers its pairs in order, duplicates included."""

    pairs: list[tuple[str, Any]]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    obj.pairs = pairs
    return obj


_KINDS = {list: "list", str: "string", bool: "boolean", type(None): "null", Decimal: "number"}


def _decode(text: str, source: str) -> list[tuple[str, Any]]:
    """The top-level pairs of the file, in order, duplicates kept (so they can be refused)."""
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_float=Decimal,
            parse_int=Decimal,
            parse_constant=Decimal,  # NaN, Infinity: refused as prices below
        )
    except ValueError as e:
        raise PriceTableError(f"{source}: not valid JSON: {e}") from None
    if not isinstance(value, _Object):
        raise PriceTableError(
            f"{source}: must be a JSON object of model patterns to prices, "
            f"not a {_KINDS.get(type(value), type(value).__name__)}"
        )
    return value.pairs


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    if not pattern:
        raise PriceTableError(f"{where}: a pattern cannot be empty")
    if _CONTROL.search(pattern):
        raise PriceTableError(f"{where}: a pattern cannot hold spaces or control characters")
    depth = 0
    for char in pattern:
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
    if depth:
        raise PriceTableError(f"{where}: '[' is never closed by ']'")
    return re.compile(translate(pattern))


def _price(prices: Any, where: str) -> Price:
    if not isinstance(prices, _Object):
        raise PriceTableError(
            f"{where}: must map to an object with the fields {', '.join(PRICE_FIELDS)}"
        )
    names = [name for name, _ in prices.pairs]
    for name in names:
        if name not in PRICE_FIELDS:
            raise PriceTableError(
                f"{where}: field {name!r} is unknown (known: {', '.join(PRICE_FIELDS)})"
            )
        if names.count(name) > 1:
            raise PriceTableError(f"{where}: field {name!r} appears twice")
    values = {}
    for name in PRICE_FIELDS:
        if name not in prices:
            raise PriceTableError(f"{where}: field {name!r} is missing")
        value = prices[name]
        if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
            shown = str(value) if isinstance(value, Decimal) else json.dumps(value, default=str)
            raise PriceTableError(
                f"{where}: field {name!r} must be a number of USD per million tokens, "
                f"0 or more, not {shown}"
            )
        values[name] = value
    return Price(**values)
