"""Tests for L{linkrouter.sealing}: managed accounts' credentials sealed with the account key."""

from __future__ import annotations

import base64
import secrets

from twisted.trial.unittest import SynchronousTestCase

from linkrouter.sealing import AccountKey, CannotOpen


def plaintext() -> bytes:
    return ("sk-ant-oat01-" + secrets.token_hex(16)).encode()


class SealingTests(SynchronousTestCase):
    """L{AccountKey} seals and opens, and refuses what it did not seal for this account."""

    def setUp(self) -> None:
        self.key = AccountKey.from_secret(secrets.token_urlsafe(32), "/state/account-key")

    def test_round_trip(self) -> None:
        """What is sealed for an account opens, for that account, with the same key."""
        secret = plaintext()
        sealed = self.key.seal("managed-0123456789ab", secret)
        self.assertEqual(self.key.open("managed-0123456789ab", sealed), secret)

    def test_same_text_same_key(self) -> None:
        """Two keys made from the same text (two instances of a fleet) open each other's."""
        text = secrets.token_urlsafe(32)
        secret = plaintext()
        sealed = AccountKey.from_secret(text).seal("a", secret)
        self.assertEqual(AccountKey.from_secret(text + "\n").open("a", sealed), secret)

    def test_sealed_text_hides_the_secret(self) -> None:
        """
        The sealed text is ASCII, carries no part of the secret (nor its base64), and
        differs each time (a fresh nonce).
        """
        secret = plaintext()
        first, second = (self.key.seal("a", secret) for _ in range(2))
        self.assertNotEqual(first, second)
        for sealed in (first, second):
            self.assertTrue(sealed.startswith("v1."))
            sealed.encode("ascii")
            self.assertNotIn(secret.decode()[12:], sealed)
            self.assertNotIn(base64.urlsafe_b64encode(secret).decode()[:16], sealed)

    def test_wrong_key(self) -> None:
        """Another key cannot open it: L{CannotOpen}, naming where the key came from."""
        sealed = self.key.seal("a", plaintext())
        other = AccountKey.from_secret(secrets.token_urlsafe(32), "ACCOUNT_KEY")
        error = self.assertRaises(CannotOpen, other.open, "a", sealed)
        self.assertIn("ACCOUNT_KEY", str(error))

    def test_other_account(self) -> None:
        """A blob copied onto another account's row does not open (the id is bound in)."""
        sealed = self.key.seal("managed-aaaaaaaaaaaa", plaintext())
        self.assertRaises(CannotOpen, self.key.open, "managed-bbbbbbbbbbbb", sealed)

    def test_damaged(self) -> None:
        """A changed byte, a cut blob, no prefix or not base64: L{CannotOpen}."""
        sealed = self.key.seal("a", plaintext())
        body = sealed[3:]
        flipped = body[:20] + ("A" if body[20] != "A" else "B") + body[21:]
        for bad in ("v1." + flipped, sealed[:20], body, "v1.***", "", "v1."):
            self.assertRaises(CannotOpen, self.key.open, "a", bad)

    def test_repr_hides_key(self) -> None:
        """The key's repr shows where it came from, not the key."""
        self.assertIn("/state/account-key", repr(self.key))
        self.assertNotIn("AESGCM", repr(self.key))
