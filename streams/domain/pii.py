"""Personal data: caller phone numbers and reporter ids leave the input topics only as keyed hashes.

A keyed hash (HMAC-SHA256 with `settings.pii_hmac_key`) rather than a plain hash: phone numbers
are few enough that an unkeyed SHA-256 of every number could be tabulated and reversed. The same
person must hash the same way every time so cases, repeat callers and ratings link up, so numbers
are normalized first ("+86 138-1234-5678", "0086 13812345678" and "13812345678" are one caller).
Rotating the key breaks that linkage on purpose; keep it stable per deployment.
"""
from __future__ import annotations

import hashlib
import hmac
import unicodedata

from whistle.ground.errors import ConfigError, ValidationError
from whistle.ground.settings import Secret

_SEPARATORS = str.maketrans("", "", " -().\t")
_COUNTRY_CODE = "86"


def normalize_phone(raw: str) -> str:
    """The national form of a Chinese phone number: mobile `1xxxxxxxxxx`, landline `0<area><number>`.

    Accepts full-width digits, spaces, dashes, dots and parentheses, and the international prefixes
    +86 / 0086 (a landline written internationally drops its trunk 0, which is put back).
    Numbers of other countries keep their `+<country>` prefix.
    """
    text = unicodedata.normalize("NFKC", raw).translate(_SEPARATORS)
    international = False
    if text.startswith("+"):
        text, international = text[1:], True
    elif text.startswith("00"):
        text, international = text[2:], True
    if not text.isdigit() or not text.isascii():
        raise ValidationError(f"{raw!r} is not a phone number (digits, spaces, dashes, parentheses and a leading + only)")
    if international and not text.startswith(_COUNTRY_CODE):
        return f"+{text}"
    if international or (len(text) == 13 and text.startswith("861")):  # 8613812345678: +86 without the +
        text = text[len(_COUNTRY_CODE):]
        is_mobile = len(text) == 11 and text.startswith("1")
        if not is_mobile and not text.startswith("0"):  # +86 10 1234 5678 is Beijing 010-12345678
            text = f"0{text}"
    if len(text) < 3 or len(text) > 15:
        raise ValidationError(f"{raw!r} has {len(text)} digits; a phone number has 3 to 15")
    return text


class PersonalDataHasher:
    """Keyed hashes of personal identifiers, hex HMAC-SHA256, one domain per kind of identifier."""

    __slots__ = ("_key",)

    def __init__(self, key: Secret | str) -> None:
        value = key.value if isinstance(key, Secret) else key
        if not value:
            raise ConfigError("WHISTLE_PII_HMAC_KEY is empty: personal data cannot be hashed", field="pii_hmac_key")
        self._key = value.encode("utf-8")

    def phone(self, raw: str) -> str:
        """Hash of a phone number, equal for every way of writing the same number."""
        return self._digest(b"phone:" + normalize_phone(raw).encode("ascii"))

    def reporter(self, reporter_id: str) -> str:
        """Hash of an app account id (compared exactly, apart from surrounding spaces)."""
        return self._digest(b"reporter:" + reporter_id.strip().encode("utf-8"))

    def _digest(self, message: bytes) -> str:
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()
