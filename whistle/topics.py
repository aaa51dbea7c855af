"""The names of Whistle's topics, in one place (declared in infra/topics.yaml, prefixed per deployment)."""
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
    def with_prefix(cls, prefix: str) -> "Topics":
        base = cls()
        return cls(**{name: prefix + value for name, value in vars(base).items()})

    @property
    def sources(self) -> tuple[str, str, str]:
        return (self.camera, self.hotline, self.app)

    @property
    def audited(self) -> tuple[str, ...]:
        """Every topic whose records the sink stores and `audit verify` accounts for."""
        return (self.camera, self.hotline, self.app, self.case_events, self.breaches, self.deadletter)
