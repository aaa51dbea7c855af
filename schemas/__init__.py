"""Whistle's event contracts: Avro schemas, topic specs, validation, wire format (see README.md)."""
