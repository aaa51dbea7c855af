"""The deployments (infra/compose.yaml, infra/systemd/) agree with the CLI, Settings, README and the local stack, and the
checker (infra/deployment.py) reports broken copies of them: it can fail. No container, no server."""
from __future__ import annotations

import shutil

import typer.main
import yaml

from infra.deployment import COMPOSE, SYSTEMD, compose_problems, deployment_problems, documented_names, unit_problems
from whistle.cli import app
from whistle.ground.settings import Settings

CLI = typer.main.get_command(app)


def test_the_committed_deployments_have_no_problem():
    assert deployment_problems(CLI) == []


def test_a_broken_compose_document_is_reported_by_file_and_field():
    broken = yaml.safe_load(COMPOSE.read_text())
    services = broken["services"]
    services["sink"] = {**services["sink"], "command": ["sinks"]}
    services["worker-1"] = {**services["worker-1"], "environment": {**services["worker-1"]["environment"], "WHISTLE_WORKER_NAME": "w"}}
    services["clock-1"] = {**services["clock-1"], "environment": {**services["clock-1"]["environment"], "WHISTLE_PII_HMAC_KEY": "inline"}}
    gateway_env = {key: value for key, value in services["gateway"]["environment"].items() if key != "WHISTLE_GATEWAY_HOST"}
    services["gateway"] = {**services["gateway"], "command": ["gateway", "--keys", "/run/secrets/gateway-keys.yaml"]}  # the old file's
    services["dashboard"] = {**services["dashboard"], "ports": ["127.0.0.1:18090:8090"]}
    services["anchor"] = {**services["anchor"], "environment": gateway_env, "command": ["gateway"], "ports": ["18080:18080"]}
    services["kafka-1"] = {**services["kafka-1"], "volumes": ["kafka-data:/var/lib/kafka/data", "./kafka/missing.sh:/opt/x.sh"]}
    services["clickhouse"] = {**services["clickhouse"], "image": "clickhouse/clickhouse-server"}
    problems = compose_problems(broken, CLI)
    expected = [
        "infra/compose.yaml: services.sink.command: `whistle` has no subcommand 'sinks'",
        "infra/compose.yaml: services.worker-1.environment: WHISTLE_WORKER_NAME is no Settings field",
        "infra/compose.yaml: services.clock-1.environment: WHISTLE_PII_HMAC_KEY is a secret",
        "infra/compose.yaml: services.gateway.command: `whistle gateway --keys /run/secrets/gateway-keys.yaml`: No such option: --keys",
        "infra/compose.yaml: services.dashboard.ports: container port 8090 is not the one it listens on, 18090",
        "infra/compose.yaml: services.anchor: `whistle gateway` listens on 127.0.0.1 inside its container",
        "infra/compose.yaml: services.anchor.healthcheck: none asks port 18080",
        "infra/compose.yaml: services.kafka-1.volumes: 'kafka-data' is not declared under volumes",
        "infra/compose.yaml: services.kafka-1.volumes: ./kafka/missing.sh does not exist",
        "infra/compose.yaml: services.clickhouse.image: 'clickhouse/clickhouse-server' is neither built here nor a pinned tag",
    ]
    assert all(any(p.startswith(e) for p in problems) for e in expected), problems
    assert len(problems) == len(expected), problems


def test_broken_systemd_units_are_reported_by_file_and_field(tmp_path):
    folder = shutil.copytree(SYSTEMD, tmp_path / "systemd")
    worker = folder / "whistle-worker@.service"
    text = worker.read_text()
    worker.write_text(text.replace("bin/whistle worker", "bin/whistle worker --workers 2").replace("ProtectSystem=strict\n", "")
                      .replace("RestartPreventExitStatus=2", "RestartPreventExitStatus=2 75").replace("=%i", "=worker-1"))
    (folder / "whistle-clock.service").unlink()
    problems = unit_problems(folder, CLI)
    expected = [
        f"{folder}: whistle-clock.service is missing",
        f"{worker}: [Service] ProtectSystem is unset, expected strict",
        f"{worker}: [Service] RestartPreventExitStatus holds 75",
        f"{worker}: [Service] Environment must set WHISTLE_WORKER_ID=%i",
        f"{worker}: [Service] ExecStart: `whistle worker --workers 2`: No such option: --workers",
    ]
    assert all(any(p.startswith(e) for p in problems) for e in expected), problems
    assert len(problems) == len(expected), problems


def test_readme_rows_name_their_abbreviated_variables():
    readme = ("## Production configuration\n| `WHISTLE_CLICKHOUSE_ADMIN_USER` / `_ADMIN_PASSWORD` | x |\n"
              "| `WHISTLE_VERIFY_DEAD_LETTER_SHARE` / `_MIN` | y |\n`CLUSTER_ID`\n## Next\n`WHISTLE_ANCHOR_KEY`\n")
    assert documented_names(readme) == {"WHISTLE_CLICKHOUSE_ADMIN_USER", "WHISTLE_CLICKHOUSE_ADMIN_PASSWORD",
                                        "WHISTLE_VERIFY_DEAD_LETTER_SHARE", "WHISTLE_VERIFY_DEAD_LETTER_MIN", "CLUSTER_ID"}


def test_env_names_are_the_variables_settings_read():
    names = Settings.env_names()
    assert set(Settings().to_env()) <= set(names)
    assert names["WHISTLE_KAFKA_SASL_PASSWORD"] and not names["WHISTLE_KAFKA_SASL_USERNAME"]
    assert Settings.from_env({"WHISTLE_GATEWAY_HOST": "0.0.0.0"}).gateway_host == "0.0.0.0"
