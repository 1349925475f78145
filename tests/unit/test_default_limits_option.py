"""C{--default-limits JSON} / C{LINKROUTER_DEFAULT_LIMITS}: read, checked, one-line errors."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.config import ConfigError
from linkrouter.limits import Limits

from .test_config import config
from .test_tap import parsed


class DefaultLimitsOptionTests(SynchronousTestCase):
    """The option through L{linkrouter.config.resolve}."""

    def test_absent(self) -> None:
        """Without the flag or its variable there are no default limits."""
        self.assertIsNone(config().default_limits)

    def test_flag_and_variable(self) -> None:
        """The flag is read; the variable is read; the flag wins; null means none."""
        self.assertEqual(config(default_limits='{"rpm": 10}').default_limits, Limits(rpm=10))
        env = {"LINKROUTER_DEFAULT_LIMITS": '{"concurrency": 2, "models": ["claude-*"]}'}
        self.assertEqual(config(env).default_limits,
                         Limits(concurrency=2, models=("claude-*",)))
        self.assertEqual(config(env, default_limits='{"rpm": 3}').default_limits,
                         Limits(rpm=3))
        self.assertIsNone(config(default_limits="null").default_limits)

    def test_bad_values_stop(self) -> None:
        """Bad JSON or bad limits raise L{ConfigError} on one line naming the flag."""
        for text, where in (("{rpm: 1}", "--default-limits: is not JSON"),
                            ('{"rpm": 0}', "--default-limits.rpm: must be at least 1"),
                            ('{"budget_usd": {"2d": 1}}', "--default-limits.budget_usd.2d"),
                            ("[1]", "--default-limits: must be an object")):
            for given in ({"default_limits": text},
                          {"env": {"LINKROUTER_DEFAULT_LIMITS": text}}):
                with self.assertRaises(ConfigError) as caught:
                    config(**given)  # type: ignore[arg-type]
                message = str(caught.exception)
                self.assertIn(where, message)
                self.assertTrue(message.startswith("--default-limits"), message)
                self.assertNotIn("\n", message)
                self.assertEqual(caught.exception.option, "--default-limits")


class DefaultLimitsStartUpTests(SynchronousTestCase):
    """Start-up (L{linkrouter.tap.Options}) refuses bad default limits on one line."""

    def test_refused(self) -> None:
        """A bad flag or variable is a usage error naming --default-limits; a good one is kept."""
        for args, env in ((["--default-limits", "{nope"], {}),
                          ([], {"LINKROUTER_DEFAULT_LIMITS": '{"rpm": "lots"}'})):
            error = self.assertRaises(usage.UsageError, parsed, args, env)
            self.assertIn("--default-limits", str(error))
            self.assertNotIn("\n", str(error))
        options = parsed(["--default-limits", '{"rpm": 7}'])
        self.assertEqual(options.config.default_limits, Limits(rpm=7))
