"""The names Whistle gives things in Kafka, in one place: topics (declared in infra/topics.yaml) and consumer groups.

Every name takes the deployment's prefix, so several deployments (or test runs) can share one cluster.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    camera: str = "whistle.raw.camera"
    hotline: str = "whistle.raw.hotline"
    app: str = "whistle.raw.app"
    inbox: str = "whistle.cases.inbox"
    case_events: str = "whistle.cases.events"
    breaches: str = "whistle.sla.breaches"
    deadletter: str = "whistle.deadletter"

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        base = cls()
        return cls(**{name: prefix + value for name, value in vars(base).items()})

    @property
    def sources(self) -> tuple[str, str, str]:
        return (self.camera, self.hotline, self.app)

    @property
    def audited(self) -> tuple[str, ...]:
        """Every topic whose records the sink stores and `audit verify` accounts for."""
        return (self.camera, self.hotline, self.app, self.case_events, self.breaches, self.deadletter)


@dataclass(frozen=True)
class Groups:
    """Consumer groups (and the workers' internal state topic, named as Faust named it, so deployments keep their state)."""

    cases: str = "whistle-cases"
    sink: str = "whistle-sink"
    alerts_webhook: str = "whistle-alerts-webhook"
    changelog: str = "whistle-cases-case-state-changelog"

    @classmethod
    def with_prefix(cls, prefix: str) -> Groups:
        base = cls()
        return cls(**{name: prefix + value for name, value in vars(base).items()})
