"""Personal data in free text: phone numbers, ID-card numbers and e-mail addresses replaced by fixed marks.

Residents and operators type contact details into free-text fields ("请回电 137 0731 2288 张三"). The
raw topics keep what was sent; the normalized Report, and so every derived topic and ClickHouse,
carries only the redacted text (applied in streams.domain.normalize to `description` and
`address_text`). Pure and deterministic: `redact(text) -> (redacted_text, kinds_found)`.

What is recognised (digits may be full-width: the text is matched through a one-to-one fold of
full-width ASCII, the ideographic space and Unicode dashes, so positions map back and everything that
is not personal data is returned character for character as it came):

mobile    `1[3-9]` + 9 digits (11), a single space or dash allowed between any two digits, optionally
          after +86 / 0086 / 86 / (+86)                                              -> [电话]
landline  trunk 0 + area code (010, 02x, or 0 + 3 digits starting 3-9) + 7-8 digits not starting 0,
          area code optionally in parentheses, a space or dash after the area code and in the
          number, optionally after +86 / 0086                                      -> [电话]
id_card   18-character resident ID (GB 11643): 17 digits + a digit or X, optionally spaced 6-8-4,
          redacted only when its ISO 7064 MOD 11-2 check character is right AND digits 7-14 are a
          plausible birth date (1900-01-01 up to 2099-12-31, a real calendar day)  -> [身份证]
email     local@domain.tld (ASCII local part, dotted domain, alphabetic TLD of 2+) -> [邮箱]

The choice on ID numbers: only a check-valid number is an ID number. Order, invoice and waybill
numbers of 18 digits are common in case texts; a random one passes the check with probability 1/11
and the date test as well with well under 1/100, so they stay readable, while a real ID number always
passes both. A mistyped ID number (wrong check character) is therefore NOT redacted: the cost of
that choice, accepted because a number that fails the check no longer identifies anyone reliably.
15-digit first-generation ID numbers (issued until 2004, no check character) are not recognised.

A number must stand alone: no digit directly before or after it, and no "digit." before it or
".digit" after it, so coordinates (28.1913707312288), decimals, dates (2026-12-06) and longer digit
runs (17-digit order numbers) are left as they are. Passes run e-mail, ID card, mobile, landline, in
that order, each over what the previous left, so an e-mail made of a phone number is one [邮箱].
"""
from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date

PHONE_MARK = "[电话]"
ID_CARD_MARK = "[身份证]"
EMAIL_MARK = "[邮箱]"
KINDS = ("mobile", "landline", "id_card", "email")  # the order kinds_found is reported in

# One character for one character: full-width ASCII (U+FF01-FF5E), the ideographic space, Unicode dashes.
_FOLD = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
_FOLD.update({0x3000: ord(" "), 0x2010: ord("-"), 0x2011: ord("-"), 0x2012: ord("-"), 0x2013: ord("-"),
              0x2014: ord("-"), 0x2212: ord("-"), 0xFE63: ord("-")})
_BLANK = "\x00"  # what a redacted span becomes in the working copy: matches nothing, keeps positions

_BEFORE = r"(?<![0-9])(?<![0-9][.,])"  # not inside a longer number or a decimal
_AFTER = r"(?![0-9])(?![.,][0-9])"
_SEP = r"[ \-]?"
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9\-])",
                    re.ASCII)
_ID_CARD = re.compile(_BEFORE + r"([1-9][0-9]{5}) ?([0-9]{8}) ?([0-9]{3}[0-9Xx])(?![0-9A-Za-z])", re.ASCII)
_MOBILE = re.compile(_BEFORE + r"(?:(?:\+|00)?86" + _SEP + r"|\(\+?86\)" + _SEP + r")?1" + _SEP + r"[3-9](?:" + _SEP + r"[0-9]){9}" + _AFTER,
                     re.ASCII)
_LANDLINE = re.compile(_BEFORE + r"(?:(?:\+|00)86" + _SEP + r")?(?:\(0(?:10|2[0-9]|[3-9][0-9]{2})\)|0(?:10|2[0-9]|[3-9][0-9]{2}))"
                       + _SEP + r"[1-9][0-9]{2,3}" + _SEP + r"[0-9]{4}" + _AFTER, re.ASCII)

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def id_card_is_valid(number: str) -> bool:
    """True for an 18-character resident ID number whose check character and birth date are right."""
    if len(number) != 18 or not number[:17].isascii() or not number[:17].isdigit():
        return False
    total = sum(int(digit) * weight for digit, weight in zip(number[:17], _ID_WEIGHTS))
    if _ID_CHECK[total % 11] != number[17].upper():
        return False
    year, month, day = int(number[6:10]), int(number[10:12]), int(number[12:14])
    if not 1900 <= year <= 2099:
        return False
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def redact(text: str) -> tuple[str, tuple[str, ...]]:
    """(text with personal data replaced by marks, the kinds found in KINDS order); text without any comes back as is."""
    if not text:
        return text, ()
    work = text.translate(_FOLD)
    if not any(c.isdigit() or c == "@" for c in work):
        return text, ()
    spans: list[tuple[int, int, str]] = []
    found: set[str] = set()

    def take(pattern: re.Pattern[str], kind: str, mark: str, valid: Callable[[re.Match[str]], bool] | None = None) -> None:
        nonlocal work
        hits = [m for m in pattern.finditer(work) if valid is None or valid(m)]
        for m in hits:
            spans.append((m.start(), m.end(), mark))
            work = work[: m.start()] + _BLANK * (m.end() - m.start()) + work[m.end():]
        if hits:
            found.add(kind)

    take(_EMAIL, "email", EMAIL_MARK)
    take(_ID_CARD, "id_card", ID_CARD_MARK, lambda m: id_card_is_valid(m.group(1) + m.group(2) + m.group(3)))
    take(_MOBILE, "mobile", PHONE_MARK)
    take(_LANDLINE, "landline", PHONE_MARK)
    if not spans:
        return text, ()
    pieces, at = [], 0
    for start, end, mark in sorted(spans):
        pieces.append(text[at:start])
        pieces.append(mark)
        at = end
    pieces.append(text[at:])
    return "".join(pieces), tuple(kind for kind in KINDS if kind in found)
