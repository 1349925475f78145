"""C{--prices FILE} / C{LINKROUTER_PRICES}: the price table read at start-up, one-line errors."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.config import ConfigError
from linkrouter.pricing import PriceTable
from linkrouter.tokenusage import Usage

from .test_config import config
from .test_tap import parsed

ROW = {"input": 1, "output": 2, "cache_write_5m": 3, "cache_write_1h": 4, "cache_read": 0.5}


class PricesOptionTests(SynchronousTestCase):
    """The option through L{linkrouter.config.resolve}."""

    def write(self, content: object) -> str:
        path = Path(self.mktemp())
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(path)

    def test_absent(self) -> None:
        """Without the flag or its variable the shipped table prices usage."""
        self.assertEqual(config().prices, PriceTable.shipped())
        self.assertEqual(config().prices.source, "linkrouter/prices.json")

    def test_flag_and_variable(self) -> None:
        """The flag's file is read; the variable's too; the flag wins."""
        mine = self.write({"team-*": ROW})
        other = self.write({"other-*": dict(ROW, input=9)})
        for prices in (config(prices=mine).prices,
                       config({"LINKROUTER_PRICES": mine}).prices,
                       config({"LINKROUTER_PRICES": other}, prices=mine).prices):
            self.assertEqual([row.pattern for row in prices.rows], ["team-*"])
            self.assertEqual(prices.price_for("team-model"), (prices.rows[0].price, True))
            self.assertEqual(prices.cost("team-model", Usage(input_tokens=1_000_000)),
                             Decimal(1))

    def test_bad_files_stop(self) -> None:
        """
        A malformed file, or a path that cannot be read, raises L{ConfigError}: one line
        naming --prices, the file and (where there is one) the pattern and field.
        """
        missing = str(Path(self.mktemp()) / "nope.json")
        cases = (
            (self.write({"claude-*": {k: v for k, v in ROW.items() if k != "input"}}),
             "pattern 'claude-*': field 'input' is missing"),
            (self.write({"claude-*": dict(ROW, output=-1)}),
             "pattern 'claude-*': field 'output' must be a number"),
            (self.write({"claude-*": dict(ROW, cache_write_2h=1)}),
             "field 'cache_write_2h' is unknown"),
            (self.write("{\n  nope\n}"), "not valid JSON"),
            (self.write([1]), "must be a JSON object"),
            (self.write({}), "no rows"),
            (missing, "cannot read the price file"),
            (str(Path(missing).parent), "cannot read the price file"),
        )
        for path, where in cases:
            for given in ({"prices": path}, {"env": {"LINKROUTER_PRICES": path}}):
                with self.assertRaises(ConfigError) as caught:
                    config(**given)  # type: ignore[arg-type]
                message = str(caught.exception)
                self.assertTrue(message.startswith(f"--prices: {path}: "), message)
                self.assertIn(where, message)
                self.assertNotIn("\n", message)
                self.assertEqual(caught.exception.option, "--prices")


class PricesStartUpTests(SynchronousTestCase):
    """Start-up (the twistd plugin's L{linkrouter.tap.Options}) reads the price file."""

    def test_refused(self) -> None:
        """A bad flag or variable is a usage error on one line naming --prices and the field."""
        bad = Path(self.mktemp())
        bad.write_text(json.dumps({"claude-*": dict(ROW, input="cheap")}))
        for args, env in ((["--prices", str(bad)], {}), ([], {"LINKROUTER_PRICES": str(bad)})):
            error = self.assertRaises(usage.UsageError, parsed, args, env)
            self.assertTrue(str(error).startswith("--prices: "), str(error))
            self.assertIn("field 'input'", str(error))
            self.assertNotIn("\n", str(error))

    def test_kept(self) -> None:
        """A good file is in the configuration the service is built from; else the shipped one."""
        good = Path(self.mktemp())
        good.write_text(json.dumps({"a-*": ROW, "b-*": dict(ROW, output=7)}))
        options = parsed(["--prices", str(good)])
        self.assertEqual([row.pattern for row in options.config.prices.rows], ["a-*", "b-*"])
        self.assertEqual(parsed([]).config.prices, PriceTable.shipped())

    def test_help(self) -> None:
        """--help names the option, its variable and the default."""
        text = " ".join(str(parsed([])).split())
        self.assertIn("--prices=", text)
        self.assertIn("env: LINKROUTER_PRICES", text)
