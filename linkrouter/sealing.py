# -*- test-case-name: tests.unit.test_sealing -*-
"""
Sealing managed accounts' credentials with the account key (DESIGN §10), so the store
never holds a token in the clear.

The account key is text (generated: 32 random bytes, URL-safe base64; or given by the
operator), stretched by HKDF-SHA256 into an AES-256 key. A sealed credential is
C{"v1." + base64url(nonce + AES-GCM ciphertext and tag)}, sealed with the account's id
as associated data, so a blob copied onto another account's row does not open.
"""

from __future__ import annotations

import base64
import os

from attrs import field, frozen
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_PREFIX = "v1."
_NONCE = 12
_INFO = b"linkrouter account key v1"


class CannotOpen(Exception):
    """A sealed credential this key cannot open (another key, or damaged); no secret in it."""


@frozen
class AccountKey:
    """
    The key that seals and opens managed accounts' credentials.

    @ivar source: where the key came from (a path, or the option), for messages.
    """

    _aead: AESGCM = field(repr=False)
    source: str = "account key"

    @classmethod
    def from_secret(cls, secret: str, source: str = "account key") -> AccountKey:
        """The key for the account-key text C{secret}."""
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=_INFO).derive(secret.strip().encode("utf-8"))
        return cls(AESGCM(key), source)

    def seal(self, account_id: str, plaintext: bytes) -> str:
        """C{plaintext} sealed for the account C{account_id}, as text."""
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, plaintext, account_id.encode("utf-8"))
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, account_id: str, sealed: str) -> bytes:
        """
        The plaintext sealed for C{account_id}.

        @raise CannotOpen: another key sealed it, it belongs to another account, or it is
            damaged.
        """
        if not sealed.startswith(_PREFIX):
            raise CannotOpen("not a sealed credential")
        try:
            raw = base64.urlsafe_b64decode(sealed[len(_PREFIX):].encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise CannotOpen("not a sealed credential") from None
        if len(raw) <= _NONCE:
            raise CannotOpen("not a sealed credential")
        try:
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], account_id.encode("utf-8"))
        except InvalidTag:
            raise CannotOpen(f"the account key ({self.source}) cannot open it (sealed with "
                             "another key)") from None
