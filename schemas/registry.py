"""Schema ids for the Confluent wire framing (0x00, 4-byte big-endian schema id, Avro body).

`Serde` uses the Confluent framing only when `WHISTLE_KAFKA_SCHEMA_REGISTRY_URL` is set:
- `http(s)://host:port`: a Confluent-compatible Schema Registry, through its standard REST API
  (`POST /subjects/{subject}/versions` registers or finds a schema, `GET /schemas/ids/{id}` fetches one);
- `local:`: ids derived from the fingerprints of the schema files in this repository, for deployments
  whose downstream tools need the Confluent framing but whose readers all share these files.

Subjects follow the RecordNameStrategy (subject = the record's full name), so a schema's id does not
depend on the topic, just as a single-object-encoding fingerprint does not.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Protocol

from schemas.catalog import Catalog, schema_fingerprint
from whistle.ground.errors import ConfigError, ContractError, DecodeError, StackError
from whistle.ground.settings import Settings

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class SchemaRegistry(Protocol):
    """What `Serde` needs from a registry: an id for a schema, and a schema for an id."""

    def register(self, subject: str, definition: dict[str, Any]) -> int:
        """The id of `definition` under `subject`, registering it if new."""

    def lookup(self, schema_id: int) -> dict[str, Any]:
        """The schema definition with this id; DecodeError if the registry does not know it."""


class HttpSchemaRegistry:
    """A Confluent-compatible Schema Registry over HTTP (stdlib client: called once per schema, then cached by Serde)."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def register(self, subject: str, definition: dict[str, Any]) -> int:
        body = json.dumps({"schema": json.dumps(definition, separators=(",", ":"))}).encode("utf-8")
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        reply = self._call("POST", path, body, subject=subject)
        return int(reply["id"])

    def lookup(self, schema_id: int) -> dict[str, Any]:
        reply = self._call("GET", f"/schemas/ids/{schema_id}", None, schema_id=schema_id)
        if reply.get("schemaType", "AVRO") != "AVRO":
            raise DecodeError(f"schema id {schema_id} is a {reply['schemaType']} schema, not Avro", schema_id=schema_id)
        return json.loads(reply["schema"])

    def _call(self, method: str, path: str, body: bytes | None, **context: Any) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers={"Content-Type": _CONTENT_TYPE, "Accept": _CONTENT_TYPE})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            if method == "GET" and exc.code == 404:
                raise DecodeError(f"schema registry does not know this schema: {detail}", registry=self.url, **context) from exc
            if exc.code < 500:  # 409 incompatible, 422 invalid: the schema, not the server, is at fault
                raise ContractError(f"schema registry refused {method} {path}: HTTP {exc.code} {detail}", registry=self.url, **context) from exc
            raise StackError(f"schema registry failed {method} {path}: HTTP {exc.code} {detail}", registry=self.url, **context) from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise StackError(f"schema registry unreachable: {exc}", registry=self.url, **context) from exc


class LocalSchemaRegistry:
    """Ids from the repository's schema files: the low 31 bits of each schema's CRC-64-AVRO fingerprint.

    Every current and released schema gets a stable id without a server; ids are checked unique at start.
    """

    def __init__(self, catalog: Catalog) -> None:
        self._by_id: dict[int, dict[str, Any]] = {}
        for version in catalog.by_fingerprint.values():
            schema_id = self.id_of(version.fingerprint)
            if schema_id in self._by_id:
                raise ConfigError(f"schemas {version.path} and another share local schema id {schema_id}; change one", field=version.name)
            self._by_id[schema_id] = version.definition

    @staticmethod
    def id_of(fingerprint: bytes) -> int:
        return int.from_bytes(fingerprint, "little") & 0x7FFFFFFF

    def register(self, subject: str, definition: dict[str, Any]) -> int:
        schema_id = self.id_of(schema_fingerprint(definition)[1])
        if schema_id not in self._by_id:
            raise ContractError(f"schema {subject} is not among the schema files; add it to schemas/avro first", subject=subject)
        return schema_id

    def lookup(self, schema_id: int) -> dict[str, Any]:
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise DecodeError(f"schema id {schema_id} is not among the local schema files", schema_id=schema_id) from None


def registry_from_settings(settings: Settings, catalog: Catalog) -> SchemaRegistry | None:
    """The registry `settings.kafka.schema_registry_url` names, or None for single-object encoding."""
    url = settings.kafka.schema_registry_url
    if not url:
        return None
    if url == "local:":
        return LocalSchemaRegistry(catalog)
    if url.startswith(("http://", "https://")):
        return HttpSchemaRegistry(url)
    raise ConfigError(f"WHISTLE_KAFKA_SCHEMA_REGISTRY_URL={url!r}: expected http(s)://host:port or local:", field="schema_registry_url")
