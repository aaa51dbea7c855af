"""Whistle's error hierarchy.

One root, small typed families. Errors carry context (topic, partition, offset,
field, stage) because every error on the data path is data on its way to the
dead-letter topic: `as_headers()` is what the dead-letter record carries.
"""
from __future__ import annotations

from typing import Any


class WhistleError(Exception):
    """Root of every error Whistle raises on purpose."""

    stage: str = "whistle"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = {k: v for k, v in context.items() if v is not None}

    def __str__(self) -> str:
        if not self.context:
            return self.message
        where = ", ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} ({where})"

    def with_context(self, **context: Any) -> WhistleError:
        """Attach more context (e.g. the Kafka position) as the error travels outwards."""
        self.context.update({k: v for k, v in context.items() if v is not None})
        return self

    def as_headers(self) -> dict[str, str]:
        """Kafka-Connect-style dead-letter headers describing this error."""
        headers = {
            "whistle.error.stage": self.stage,
            "whistle.error.class": type(self).__name__,
            "whistle.error.message": self.message,
        }
        for key, value in self.context.items():
            headers[f"whistle.error.{key}"] = str(value)
        return headers


class ConfigError(WhistleError):
    """Settings, policy or reference data that cannot be used as given."""

    stage = "config"


class StackError(WhistleError):
    """The local Kafka/ClickHouse stack cannot be brought up, reached or stopped."""

    stage = "stack"


class ContractError(WhistleError):
    """A record that breaks its contract: undecodable, unknown schema, invalid field."""

    stage = "decode"


class DecodeError(ContractError):
    """Bytes that are not a record Whistle can read (framing, fingerprint, Avro body)."""


class ValidationError(ContractError):
    """A record that decodes but whose fields break the schema or its value ranges."""

    stage = "validate"

    def __init__(self, message: str, *, field: str | None = None, problems: list[tuple[str, str]] | None = None, **context: Any) -> None:
        super().__init__(message, field=field, **context)
        self.problems = problems or ([(field, message)] if field else [])


class DomainError(WhistleError):
    """A domain rule refused an input (e.g. an invalid lifecycle transition)."""

    stage = "domain"


class TransitionError(DomainError):
    """A handling action that the case's current state does not allow."""

    stage = "transition"


class AuthError(WhistleError):
    """A sender without a valid credential, or one its credential does not allow."""

    stage = "authenticate"


class DeliveryError(WhistleError):
    """A write was not acknowledged: by Kafka, or by an alert receiver."""

    stage = "deliver"


class StoreError(WhistleError):
    """ClickHouse refused or could not take a statement."""

    stage = "store"
