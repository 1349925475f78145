"""Token labels: what the admin API refuses, and how a foreign label is shown."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from linkrouter.labels import MAX_LABEL_LENGTH, escaped, label_problem

#: One of each kind of character a label must not carry raw, and how it is shown.
UNPRINTABLE = {
    "\x00": "\\x00",
    "\x1b": "\\x1b",
    "\n": "\\x0a",
    "\t": "\\x09",
    "\x7f": "\\x7f",
    "\x85": "\\x85",
    "\x9b": "\\x9b",
    "\u200b": "\\u200b",
    "\u200e": "\\u200e",
    "\u200f": "\\u200f",
    "\u202a": "\\u202a",
    "\u202e": "\\u202e",
    "\u2066": "\\u2066",
    "\u2069": "\\u2069",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
    "\ufeff": "\\ufeff",
    "\ud800": "\\ud800",
    "\U000e0001": "\\U000e0001",
}


class LabelProblemTests(SynchronousTestCase):
    """L{label_problem} refuses every unprintable character and names it as U+XXXX."""

    def test_refused(self) -> None:
        """Each unprintable character, anywhere in a label, is refused by code point."""
        for char in UNPRINTABLE:
            problem = label_problem("team " + char + " alice")
            self.assertIsNotNone(problem, repr(char))
            assert problem is not None
            self.assertIn(f"U+{ord(char):04X}", problem)
            self.assertNotIn(char, problem)
            self.assertTrue(problem.startswith("label "))

    def test_accepted(self) -> None:
        """Printable text in any script, emoji and spaces is fine; so is the empty label."""
        for label in ("", "alice", "caf\u00e9 \u043a\u043b\u044e\u0447 \u65e5\u672c",
                      "\U0001f600 bot", "a" * MAX_LABEL_LENGTH, "x\\x1b"):
            self.assertIsNone(label_problem(label), label)

    def test_too_long(self) -> None:
        """A label longer than the limit is refused and the limit named."""
        self.assertIn(str(MAX_LABEL_LENGTH), label_problem("a" * (MAX_LABEL_LENGTH + 1)) or "")


class EscapedTests(SynchronousTestCase):
    """L{escaped} writes each unprintable character as a visible escape."""

    def test_each(self) -> None:
        for char, shown in UNPRINTABLE.items():
            self.assertEqual(escaped("a" + char + "b"), "a" + shown + "b")
            self.assertIsNone(label_problem(escaped("a" + char + "b")))
            # always storable and printable as UTF-8
            escaped(char).encode("utf-8")

    def test_limit(self) -> None:
        """The result is cut to the label limit unless told otherwise."""
        self.assertEqual(len(escaped("\x1b" * 100)), MAX_LABEL_LENGTH)
        self.assertEqual(len(escaped("\x1b" * 100, None)), 400)
