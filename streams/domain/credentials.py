"""Who sent a record, from its credential, and what that sender may do: one rule set for the gateway and the worker.

Identity is never read from a record's body. It comes from a credential:
- over HTTP, the API key (`X-API-Key`), whose SHA-256 the key file holds;
- over Kafka (the SDK, `whistle publish`), a record signature: the producer signs topic, key and value
  with its integrator's record-signing secret (HMAC-SHA256) and sends its name and the signature as
  headers; the worker's ingest verifies them before anything is decided. The secret of an integrator
  is derived from Whistle's master signing key, its name and the key file's `generation` for it, so the
  key file holds no secret at all and a rotation is a generation bump (the previous generation stays
  valid until the next bump, so records in flight during a rotation are not refused).

What a sender may do (the key file, format in infra/gateway-keys.example.yaml):
- publish reports on the channels (`sources`) its entry lists;
- act on cases (accept, transfer, resolve, request an extension) only as the units its entry lists
  (`units`), or units under them (`below`: a street office for its communities and grids, the district
  command centre for every handling unit); the acting unit is the credential's, never the body's choice
  outside that scope;
- rate or reopen a case only as the reporter, through a report it filed itself (the case stage checks
  that report is one of the case's), or as the hotline's return visit (`return_visit`). A key bound to a
  unit can never rate or reopen: a unit cannot rate a case it handled.

The key file is re-read when it changes (`CredentialsFile`), so keys and scopes rotate without a restart.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from streams.domain.model import ActionKind, HandlingAction, Source, scoped_report_id
from streams.domain.reference import DistrictReference
from whistle.ground.datafiles import config_error, read_entries
from whistle.ground.errors import AuthError, ConfigError

INTEGRATOR_HEADER = "whistle-integrator"
SIGNATURE_HEADER = "whistle-signature"
REPORTER_ACTIONS = frozenset({ActionKind.RATE, ActionKind.REOPEN})
# The unit_id a rating or reopening carries: who speaks for the reporter (never a handling unit).
REPORTER = "reporter"  # the reporter, through a report they filed
RETURN_VISIT = "return_visit"  # the hotline's return visit (回访)
SOURCES = tuple(source.value for source in Source)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_INTEGRATOR = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_REQUIRED = frozenset({"integrator", "sha256", "sources", "rate_per_second", "burst"})
_OPTIONAL = frozenset({"units", "below", "return_visit", "generation"})
_SIGNING_CONTEXT = b"whistle-record-signing-v1"
_log = logging.getLogger("whistle.credentials")


@dataclass(frozen=True, slots=True)
class Credential:
    """One integrator's entry in the key file."""

    integrator: str
    sha256: str  # hex SHA-256 of its API key
    sources: frozenset[str]  # channels it may publish reports on
    rate_per_second: float  # gateway token bucket
    burst: int
    units: frozenset[str] = frozenset()  # the units whose handling actions it sends ...
    below: bool = False  # ... and every unit under them
    return_visit: bool = False  # the hotline system's return visit: may rate and reopen
    generation: int = 1  # of its record-signing secret


@dataclass(frozen=True, slots=True)
class Credentials:
    """The key file, parsed: by key hash (the gateway) and by integrator (the worker). `digest` names its content."""

    by_sha256: Mapping[str, Credential]
    by_integrator: Mapping[str, Credential]
    acting: Mapping[str, frozenset[str]]  # integrator -> every unit it may act as (its units and, with below, those under them)
    digest: str

    def find(self, presented: str) -> Credential | None:
        """The credential whose key hashes to `presented`, if any."""
        return self.by_sha256.get(hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest())

    def may_act_as(self, credential: Credential, unit_id: str) -> bool:
        return unit_id in self.acting.get(credential.integrator, frozenset())


def units_under(reference: DistrictReference, unit_id: str) -> frozenset[str]:
    """The handling units below `unit_id` in the district's hierarchy (not the unit itself).

    A street: its dispatch desk, communities and their grids. A community: its grids. The district's
    command centre (the district desk): every handling unit of the district. Departments and the
    oversight offices have none under them.
    """
    if unit_id == reference.district_desk.unit_id:
        oversight = {reference.supervision.unit_id, reference.discipline.unit_id, unit_id}
        return frozenset(reference.units) - oversight
    if unit_id in reference.streets:
        communities = {c.community_id for c in reference.communities.values() if c.street_id == unit_id}
        grids = {g.grid_id for g in reference.grids.values() if g.community_id in communities}
        return frozenset({reference.streets[unit_id].desk_id, *communities, *grids})
    if unit_id in reference.communities:
        return frozenset(g.grid_id for g in reference.grids.values() if g.community_id == unit_id)
    return frozenset()


def load_credentials(path: Path | str, reference: DistrictReference) -> Credentials:
    """Parse and check the key file; every error names the file and the field."""
    path = Path(path)
    raw = path.read_bytes() if path.is_file() else b""
    entries = read_entries(path, "keys")
    by_sha256: dict[str, Credential] = {}
    by_integrator: dict[str, Credential] = {}
    acting: dict[str, frozenset[str]] = {}
    for index, entry in enumerate(entries):
        where = f"keys[{index}]"
        if not isinstance(entry, dict) or not _REQUIRED <= set(entry) or not set(entry) <= _REQUIRED | _OPTIONAL:
            raise config_error(path, where, f"needs {', '.join(sorted(_REQUIRED))} and may have {', '.join(sorted(_OPTIONAL))}")
        credential = _credential(path, where, entry, reference)
        if credential.integrator in by_integrator:
            raise config_error(path, f"{where}.integrator", f"{credential.integrator!r} is listed twice")
        if credential.sha256 in by_sha256:
            raise config_error(path, f"{where}.sha256", "the same key hash is listed twice")
        by_sha256[credential.sha256] = by_integrator[credential.integrator] = credential
        if credential.units:
            acting[credential.integrator] = frozenset(credential.units).union(
                *(units_under(reference, unit) for unit in credential.units if credential.below))
    return Credentials(MappingProxyType(by_sha256), MappingProxyType(by_integrator), MappingProxyType(acting),
                       hashlib.sha256(raw).hexdigest())


def _credential(path: Path, where: str, entry: dict, reference: DistrictReference) -> Credential:
    def fail(name: str, why: str) -> ConfigError:
        return config_error(path, f"{where}.{name}", why)

    integrator, digest, sources = entry["integrator"], entry["sha256"], entry["sources"]
    rate, burst = entry["rate_per_second"], entry["burst"]
    units, below = entry.get("units", []), entry.get("below", False)
    return_visit, generation = entry.get("return_visit", False), entry.get("generation", 1)
    if not isinstance(integrator, str) or not _INTEGRATOR.fullmatch(integrator):
        raise fail("integrator", f"{integrator!r} must be a lowercase name (a-z, 0-9, _ . -, at most 64)")
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        raise fail("sha256", "must be the 64-character lowercase hex SHA-256 of the key (printf %s KEY | sha256sum)")
    if not isinstance(sources, list) or not set(sources) <= set(SOURCES):
        raise fail("sources", f"must be a list of {', '.join(SOURCES)}, got {sources!r}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf:
        raise fail("rate_per_second", f"must be a positive number, got {rate!r}")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise fail("burst", f"must be a whole number >= 1, got {burst!r}")
    if not isinstance(units, list) or not all(isinstance(u, str) for u in units):
        raise fail("units", f"must be a list of unit ids, got {units!r}")
    unknown = [u for u in units if u not in reference.units]
    if unknown:
        raise fail("units", f"{', '.join(unknown)}: not a unit of reference {reference.version}")
    for name, flag in (("below", below), ("return_visit", return_visit)):
        if not isinstance(flag, bool):
            raise fail(name, f"must be true or false, got {flag!r}")
    if below and not units:
        raise fail("below", "needs `units`: below which unit?")
    if return_visit and units:
        raise fail("return_visit", "a return-visit key rates for the reporter and may not also act as a unit")
    if not sources and not units and not return_visit:
        raise fail("sources", "the key may do nothing: give it sources, units or return_visit")
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
        raise fail("generation", f"must be a whole number >= 1, got {generation!r}")
    return Credential(integrator, digest, frozenset(sources), float(rate), burst, frozenset(units), below, return_visit, generation)


# -- record signatures (the Kafka path) --------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def signing_secret(master: str, integrator: str, generation: int) -> bytes:
    """The record-signing secret of `integrator` at `generation`, derived from Whistle's master key."""
    return hmac.new(master.encode("utf-8"), b"\0".join((_SIGNING_CONTEXT, integrator.encode(), str(generation).encode())),
                    hashlib.sha256).digest()


def record_signature(secret: bytes, topic: str, key: bytes | None, value: bytes | None) -> str:
    """HMAC-SHA256 over the unprefixed topic name, key and value (lengths first: no two inputs sign alike)."""
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for part in (topic.encode(), key or b"", value or b""):
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    return mac.hexdigest()


@dataclass(frozen=True, slots=True)
class RecordSigner:
    """What a producer puts in the headers of every record it sends as `integrator`."""

    integrator: str
    generation: int
    secret: bytes

    def headers(self, topic: str, key: bytes | None, value: bytes | None) -> list[tuple[str, bytes]]:
        signature = f"{self.generation}:{record_signature(self.secret, topic, key, value)}"
        return [(INTEGRATOR_HEADER, self.integrator.encode()), (SIGNATURE_HEADER, signature.encode())]


def derived_signer(master: str, credential: Credential) -> RecordSigner:
    """The signer of `credential`'s integrator at its current generation (Whistle's own services: the gateway, dev tools)."""
    return RecordSigner(credential.integrator, credential.generation, signing_secret(master, credential.integrator, credential.generation))


def parse_signer(integrator: str, secret_text: str) -> RecordSigner:
    """A signer from an integrator's configuration: its name and the secret `whistle keys signing-secret` printed (`<generation>:<hex>`)."""
    generation, _, hex_secret = secret_text.partition(":")
    try:
        return RecordSigner(integrator, int(generation), bytes.fromhex(hex_secret))
    except ValueError as exc:
        raise ConfigError("WHISTLE_INTEGRATOR_SECRET must be <generation>:<hex secret>, as `whistle keys signing-secret` prints it",
                          field="integrator_secret") from exc


def issued_secret(master: str, credential: Credential) -> str:
    """The text an operator hands to `credential`'s integrator (WHISTLE_INTEGRATOR_SECRET)."""
    return f"{credential.generation}:{signing_secret(master, credential.integrator, credential.generation).hex()}"


def verify_sender(credentials: Credentials, master: str, topic: str, key: bytes | None, value: bytes | None,
                  headers: Iterable[tuple[str, bytes | str | None]]) -> Credential:
    """The credential that signed this record, or AuthError naming what is missing or wrong."""
    found = {name: value_ for name, value_ in headers if name in (INTEGRATOR_HEADER, SIGNATURE_HEADER)}
    name, signature = _text(found.get(INTEGRATOR_HEADER)), _text(found.get(SIGNATURE_HEADER))
    if not name or not signature:
        raise AuthError(f"the record is not signed: headers {INTEGRATOR_HEADER} and {SIGNATURE_HEADER} are required", reason="unsigned",
                        field=INTEGRATOR_HEADER if not name else SIGNATURE_HEADER)
    credential = credentials.by_integrator.get(name)
    if credential is None:
        raise AuthError("the record is signed by an integrator the key file does not know", reason="unknown_integrator",
                        field=INTEGRATOR_HEADER, integrator=name[:64])
    generation_text, _, presented = signature.partition(":")
    if not generation_text.isdigit() or int(generation_text) not in (credential.generation, credential.generation - 1):
        raise AuthError(f"the signature's secret generation is not current (current {credential.generation})", reason="stale_secret",
                        field=SIGNATURE_HEADER, integrator=name)
    expected = record_signature(signing_secret(master, name, int(generation_text)), topic, key, value)
    if not hmac.compare_digest(expected, presented):
        raise AuthError("the record's signature does not match its bytes and integrator", reason="bad_signature",
                        field=SIGNATURE_HEADER, integrator=name)
    return credential


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


# -- what a sender may do ------------------------------------------------------------------------------


def may_publish(credential: Credential, source: str) -> AuthError | None:
    """Why `credential` may not publish a report on `source`; None if it may."""
    if source in credential.sources:
        return None
    return AuthError(f"{credential.integrator} may not publish {source} reports (its key allows: {', '.join(sorted(credential.sources)) or 'none'})",
                     reason="source_not_allowed", field="source", integrator=credential.integrator)


def action_refusal(credentials: Credentials, credential: Credential, action: HandlingAction) -> AuthError | None:
    """Why `credential` may not send `action` (the rules that need no case state); None if it may.

    The case stage then checks what needs the case: the unit holds it, and a reporter's rating names one
    of the case's own reports.
    """
    who = credential.integrator
    if action.kind in REPORTER_ACTIONS:
        if credential.units:
            return AuthError(f"{who} acts as a handling unit: a unit never rates or reopens a case; ratings come from the reporter "
                             "or the hotline's return visit", reason="unit_cannot_rate", field="kind", integrator=who)
        if credential.return_visit:
            return None
        if action.report_id is None:
            return AuthError(f"{who} rates for a reporter and must name the report they filed (report_id)", reason="report_missing",
                             field="report_id", integrator=who)
        if not action.report_id.startswith(tuple(scoped_report_id(source, who, "") for source in credential.sources)):
            return AuthError(f"{who} may rate only through reports it filed itself", reason="not_reporter", field="report_id", integrator=who)
        return None
    if not credential.units:
        return not_a_unit(credential, action.kind.value)
    if not credentials.may_act_as(credential, action.unit_id):
        scope = ", ".join(sorted(credential.units)) + (" and the units under them" if credential.below else "")
        return AuthError(f"{who} may act only as {scope}, not as {action.unit_id}", reason="unit_not_in_credential", field="unit_id",
                         integrator=who)
    return None


def not_a_unit(credential: Credential, kind: str) -> AuthError:
    """The refusal of a handling action from a key bound to no unit."""
    return AuthError(f"{credential.integrator} is not bound to any unit and may not {kind} cases", reason="not_a_unit", field="kind",
                     integrator=credential.integrator)


class CredentialsFile:
    """The key file, re-read when its size or modification time changes (checked at most every `interval_s`).

    A file that no longer parses keeps the previous credentials in force and logs why, so a typo during
    a rotation does not lock every integrator out.
    """

    def __init__(self, path: Path | str, reference: DistrictReference, interval_s: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path, self.reference, self.interval_s, self._monotonic = Path(path), reference, interval_s, monotonic
        self._stamp = self._file_stamp()
        self._credentials = load_credentials(self.path, reference)
        self._checked = monotonic()

    def current(self) -> Credentials:
        now = self._monotonic()
        if now - self._checked >= self.interval_s:
            self._checked = now
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._credentials = load_credentials(self.path, self.reference)
                except ConfigError as exc:
                    _log.error("key file not reloaded, the previous keys stay in force: %s", exc)
        return self._credentials

    def _file_stamp(self) -> tuple[int, int]:
        try:
            status = self.path.stat()
        except OSError:
            return (0, 0)
        return (status.st_mtime_ns, status.st_size)
