# -*- test-case-name: tests.unit.test_labels -*-
"""
Token labels are printable text.

A label is shown in terminals (C{linkrouter tokens list}), logs and the admin console, so
one that carries control characters (C0, DEL, C1 such as C{\\x9b}), bidi overrides and
isolates, zero-width characters, line separators or lone surrogates could forge table rows,
recolour a terminal or hide what it says. The admin API refuses such labels
(L{label_problem}); a label inside a token minted elsewhere with the same secret cannot be
refused, so it is kept with those characters written as visible escapes (L{escaped}).
"""

from __future__ import annotations

import unicodedata

MAX_LABEL_LENGTH = 200

#: Unicode categories that are not printable text: controls (C0, DEL, C1), format
#: characters (bidi overrides and isolates, zero-width characters, the BOM), surrogates,
#: and the line and paragraph separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def unprintable(char: str) -> bool:
    """Whether C{char} must not appear raw in a label."""
    return unicodedata.category(char) in _UNPRINTABLE


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def label_problem(label: str) -> str | None:
    """Why C{label} is refused (naming the first bad character as U+XXXX), or C{None}."""
    if len(label) > MAX_LABEL_LENGTH:
        return f"label must be at most {MAX_LABEL_LENGTH} characters."
    for char in label:
        if unprintable(char):
            return ("label must be printable text, without control characters, bidi "
                    "overrides, zero-width characters, line separators or lone surrogates: "
                    f"it contains U+{ord(char):04X}.")
    return None


def escaped(label: str, limit: int | None = MAX_LABEL_LENGTH) -> str:
    """
    C{label} with every unprintable character written as a visible escape (C{\\x1b},
    C{\\u202e}), cut to C{limit} characters; always safe to store and to print.
    """
    if not any(unprintable(c) for c in label):
        shown = label
    else:
        shown = "".join(_escape(c) if unprintable(c) else c for c in label)
    return shown if limit is None else shown[:limit]
