"""The names Whistle gives things in Kafka, in one place: topics (declared in infra/topics.yaml) and consumer groups.

Every name takes the deployment's prefix, so several deployments (or test runs) can share one cluster.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TypeVar

from whistle.ground.errors import ConfigError

_Names = TypeVar("_Names", "Topics", "Groups")


def _prefixed(names: _Names, prefix: str) -> _Names:
    """The same names, each with the deployment's prefix."""
    return replace(names, **{field: prefix + value for field, value in vars(names).items()})


@dataclass(frozen=True)
class Topics:
    camera: str = "whistle.raw.camera"
    hotline: str = "whistle.raw.hotline"
    app: str = "whistle.raw.app"
    inbox: str = "whistle.cases.inbox"
    case_events: str = "whistle.cases.events"
    breaches: str = "whistle.sla.breaches"
    deadletter: str = "whistle.deadletter"
    rules: str = "whistle.audit.rules"
    anchors: str = "whistle.audit.anchors"

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        return _prefixed(cls(), prefix)

    @property
    def sources(self) -> tuple[str, str, str]:
        return (self.camera, self.hotline, self.app)

    def source_spec_names(self) -> dict[str, str]:
        """Each source topic of this deployment -> its name without the prefix (the topic spec's): what a record signature covers."""
        specs = Topics()
        return {self.camera: specs.camera, self.hotline: specs.hotline, self.app: specs.app}

    @property
    def audited(self) -> tuple[str, ...]:
        """Every topic whose records the sink stores and `audit verify` accounts for."""
        return (self.camera, self.hotline, self.app, self.case_events, self.breaches, self.deadletter, self.rules, self.anchors)


@dataclass(frozen=True)
class Groups:
    """Consumer groups (and the workers' internal state topic, named as Faust named it, so deployments keep their state)."""

    cases: str = "whistle-cases"
    sink: str = "whistle-sink"
    alerts_webhook: str = "whistle-alerts-webhook"
    changelog: str = "whistle-cases-case-state-changelog"

    @classmethod
    def with_prefix(cls, prefix: str) -> Groups:
        return _prefixed(cls(), prefix)

    @classmethod
    def alerts_webhook_for(cls, prefix: str, url: str, tiers: Iterable[str] | None = None, units: Iterable[str] | None = None,
                           *, name: str | None = None) -> str:
        """The consumer group of one webhook receiver, always with the deployment's prefix.

        Each receiver has a group of its own, so every receiver gets every breach it asked for (receivers
        sharing a group would split the breaches between them). `name` is the operator's choice
        (`--group NAME`): `prefix + name`. Without it, the name is derived from what the relay delivers,
        so a restarted relay finds its offsets again: `{prefix}whistle-alerts-webhook-{digest}`, the digest being
        the first 12 hex digits of the SHA-256 of the compact JSON array `[url, sorted tiers, sorted units]`
        (the URL exactly as given; no filter is an empty list). Changing the URL or a filter therefore
        starts a new group, which reads the topic from its beginning.
        """
        if name is not None:
            if not name.strip():
                raise ConfigError("a webhook consumer group name cannot be empty", field="group")
            return prefix + name
        identity = json.dumps([url, sorted(set(tiers or ())), sorted(set(units or ()))], separators=(",", ":"))
        return f"{cls.with_prefix(prefix).alerts_webhook}-{hashlib.sha256(identity.encode('utf-8')).hexdigest()[:12]}"
