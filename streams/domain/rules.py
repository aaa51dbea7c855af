"""Rules by content: each SLA policy, calendar, year schedule and reference-data file, bound to its version name.

WHY: replaying the log reproduces every decision only with the rules the decisions were made with. A policy
edited in place under the same version name, or a holiday schedule added that reaches back over decisions
already taken, would change replayed decisions silently. So the first worker to start with a rule file
registers it (`whistle.audit.rules`, streams/rules.py: name, SHA-256 and content), and every later worker
checks its files against that registry before it decides anything (`refusals`):
- a file whose version name the log knows with other content is refused: a changed rule takes a new name;
- a rule the log knows that a worker no longer has is refused: decisions made with it could not be recomputed;
- once the log holds rules of a kind, a new policy version or year schedule must come into force at or after
  now (`effective_from`, `in_force_from`), so that no decision already made changes.
Reference data is not chosen by time, so only the first rule applies to it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from streams.domain.calendar import DEFAULT_CALENDAR_FILE, BusinessCalendar, load_calendar
from streams.domain.reference import DistrictReference, load_district
from streams.domain.sla import SlaPolicy, load_policies
from whistle.ground.datafiles import file_sha256
from whistle.ground.times import from_epoch_ms, iso_ms

POLICY, CALENDAR, CALENDAR_YEAR, REFERENCE = "policy", "calendar", "calendar_year", "reference"
SLA_DIR = "sla"  # a reference directory's policies and calendars (streams/reference/README.md)
_CHOSEN_BY_TIME = (POLICY, CALENDAR_YEAR)  # rules a decision takes by its time: a new one must not reach back


@dataclass(frozen=True, slots=True)
class RuleFile:
    """One rule file as this process has it."""

    kind: str
    name: str  # the version name it goes by (see schemas/avro/RuleFile.avsc)
    path: Path
    sha256: str
    in_force_from_ms: int | None  # None: in force from the start

    @property
    def rule_id(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class RegisteredRule:
    """What the log knows of a rule: the first registration of its rule_id."""

    rule_id: str
    file: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Rules:
    """What the workers decide with, loaded once from a reference directory (WHISTLE_REFERENCE_DIR): its district version
    directory, and the SLA policies and calendar in its `sla/`. The worker and `audit replay` check them against the rules
    registry, then decide (or replay) with them."""

    reference: DistrictReference
    policies: dict[str, SlaPolicy]
    calendar: BusinessCalendar

    @classmethod
    def load(cls, reference_dir: Path) -> Rules:
        sla = Path(reference_dir) / SLA_DIR
        return cls(load_district(reference_dir), load_policies(sla), load_calendar(sla / DEFAULT_CALENDAR_FILE.name))

    def files(self) -> list[RuleFile]:
        return rule_files(self.policies, self.calendar, self.reference.directory)


def rule_files(policies: Mapping[str, SlaPolicy], calendar: BusinessCalendar, reference_dir: Path) -> list[RuleFile]:
    """Every rule file of a worker: its policies, its calendar's files (all editions) and its reference data set."""
    files = [RuleFile(POLICY, p.version, Path(p.file), p.sha256, p.effective_from_ms) for p in policies.values()]
    for source in calendar.sources:
        kind = CALENDAR if source.name == calendar.calendar_id else CALENDAR_YEAR
        files.append(RuleFile(kind, source.name, source.path, file_sha256(source.path), source.in_force_from_ms))
    for path in sorted(p for p in reference_dir.iterdir() if p.is_file()):
        files.append(RuleFile(REFERENCE, f"{reference_dir.name}/{path.name}", path, file_sha256(path), None))
    return files


def refusals(known: Mapping[str, RegisteredRule], local: Iterable[RuleFile], now_ms: int) -> list[str]:
    """Why this process may not decide with `local` given what the log `known`s, one line each naming the file; [] when it may."""
    local = list(local)
    problems = []
    begun = {rule_id.split(":", 1)[0] for rule_id in known}
    for rule in local:
        registered = known.get(rule.rule_id)
        if registered is not None and registered.sha256 != rule.sha256:
            problems.append(f"{rule.path}: {rule.kind} {rule.name!r} is in the log with content sha256 {registered.sha256} "
                            f"(file {registered.file}); this file has sha256 {rule.sha256}. The log's decisions were made with "
                            f"the registered content: give a changed rule a new version name")
        elif registered is None and rule.kind in _CHOSEN_BY_TIME and rule.kind in begun and (rule.in_force_from_ms or 0) < now_ms:
            field = "effective_from" if rule.kind == POLICY else "in_force_from"
            problems.append(f"{rule.path}: {rule.kind} {rule.name!r} is new to a log that already holds decisions: its `{field}` "
                            f"must be at or after now ({iso_ms(from_epoch_ms(now_ms))}), so that no decision already made changes")
    present = {rule.rule_id for rule in local}
    for rule_id, registered in sorted(known.items()):
        if rule_id.split(":", 1)[0] in _CHOSEN_BY_TIME and rule_id not in present:
            problems.append(f"{registered.file}: {rule_id} is in the log but not among this worker's rules: "
                            f"decisions made with it could not be recomputed")
    return problems
