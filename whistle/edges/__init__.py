"""The edges: how integrators, operators and alert receivers reach Whistle (SDK, gateway, Open311, publish, clock, alerts)."""
