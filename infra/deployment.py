"""The deployments checked without containers or servers: infra/compose.yaml and infra/systemd/ against the CLI,
Settings, README's "Production configuration" and the local stack.

`deployment_problems(cli)` reads the committed files and lists every problem, each naming its file and field, in
this order: the compose document (`compose_problems`, which the test's negative control gives a broken copy), the
Kafka nodes' SCRAM users and listeners against the clients' settings, the ClickHouse users against the local stack's,
the systemd units, and the env files' keys against README. The CLI is a parameter (`typer.main.get_command` of
`whistle.cli.app`): infra sits below the command line.
"""
from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
import yaml
from typer.core import TyperGroup

from infra.stack import clickhouse_users_xml
from streams.app import EXIT_TO_BE_RESTARTED
from whistle.ground.errors import ConfigError
from whistle.ground.settings import PROJECT_ROOT, Settings

INFRA = PROJECT_ROOT / "infra"
COMPOSE = INFRA / "compose.yaml"
SYSTEMD = INFRA / "systemd"
README = PROJECT_ROOT / "README.md"
UNITS = ("whistle-worker@.service", "whistle-sink.service", "whistle-anchor.service", "whistle-clock.service",
         "whistle-gateway.service", "whistle-dashboard.service")
SYSTEMD_ENV_FILE = "/etc/whistle/whistle.env"
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict"}
SERVERS = {"gateway": ("gateway_host", "gateway_port"), "dashboard": ("dashboard_host", "dashboard_port")}
LOOPBACK = ("127.0.0.1", "::1", "localhost")
Command = Any  # `typer.main.get_command(app)`: the CLI's root group (typer vendors click; its classes are not public)


def deployment_problems(cli: Command) -> list[str]:
    """Every problem of the committed deployment files; empty when they agree with the CLI, Settings and README."""
    document = yaml.safe_load(COMPOSE.read_text())
    return [*compose_problems(document, cli), *_kafka_problems(document), *_clickhouse_problems(document),
            *unit_problems(SYSTEMD, cli), *_documented_problems(document)]


def compose_problems(document: Mapping[str, Any], cli: Command, source: Path = COMPOSE) -> list[str]:
    """The problems of one parsed compose document (paths relative to `source`'s folder)."""
    where, base = _name(source), source.parent
    services: Mapping[str, Any] = document.get("services") or {}
    volumes, secrets = set(document.get("volumes") or {}), set(document.get("secrets") or {})
    problems: list[str] = []
    for name, service in services.items():
        at = f"{where}: services.{name}"
        env = _environment(service.get("environment"))
        problems += _env_problems(env, at + ".environment", inline=True)
        for env_file in _listed(service.get("env_file")):
            path = _env_file(base / env_file)
            if path is None:
                problems.append(f"{at}.env_file: neither {env_file} nor {env_file}.example exists")
            else:
                problems += _env_problems(_env_values(path), f"{_name(path)}", inline=False)
        for volume in _listed(service.get("volumes")):
            volume_source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
            if volume_source.startswith((".", "/")):
                if not (base / volume_source).exists():
                    problems.append(f"{at}.volumes: {volume_source} does not exist")
            elif volume_source not in volumes:
                problems.append(f"{at}.volumes: {volume_source!r} is not declared under volumes")
        for secret in _listed(service.get("secrets")):
            secret_name = secret.get("source") if isinstance(secret, dict) else secret
            if secret_name not in secrets:
                problems.append(f"{at}.secrets: {secret_name!r} is not declared under secrets")
        for dependency in _listed(service.get("depends_on")):
            if dependency not in services:
                problems.append(f"{at}.depends_on: no service {dependency!r}")
        if "build" in service:
            problems += _whistle_service_problems(service, env, cli, base, at)
        elif not re.fullmatch(r"[\w./-]+:[\w.-]+", str(service.get("image", ""))) or str(service["image"]).endswith(":latest"):
            problems.append(f"{at}.image: {service.get('image')!r} is neither built here nor a pinned tag")
    return problems


def unit_problems(folder: Path, cli: Command) -> list[str]:
    """The systemd units of a deployment without containers: one per Whistle process, hardened, restarted on failure."""
    problems = [f"{_name(folder)}: {unit} is missing" for unit in UNITS if not (folder / unit).exists()]
    env_example = folder / "whistle.env.example"
    state_dir = str(_env_values(env_example).get("WHISTLE_STACK_STATE_DIR", Settings().stack.state_dir))
    for path in sorted(folder.glob("*.service")):
        at = _name(path)
        unit = _unit(path)
        service = unit.get("Service", {})
        if path.name not in UNITS:
            problems.append(f"{at}: not one of {', '.join(UNITS)}")
        if SYSTEMD_ENV_FILE not in [value.lstrip("-") for value in service.get("EnvironmentFile", [])]:
            problems.append(f"{at}: [Service] EnvironmentFile does not read {SYSTEMD_ENV_FILE}")
        for key, expected in {"User": "whistle", "Restart": "on-failure", **HARDENING}.items():
            values = service.get(key, [])
            if values != [expected]:
                problems.append(f"{at}: [Service] {key} is {values or 'unset'}, expected {expected}")
        if str(EXIT_TO_BE_RESTARTED) in " ".join(service.get("RestartPreventExitStatus", [])).split():
            problems.append(f"{at}: [Service] RestartPreventExitStatus holds {EXIT_TO_BE_RESTARTED}, the exit that asks for a restart")
        if state_dir not in " ".join(service.get("ReadWritePaths", [])).split():
            problems.append(f"{at}: [Service] ReadWritePaths lacks the state directory {state_dir} (WHISTLE_STACK_STATE_DIR)")
        env = dict(entry.split("=", 1) for value in service.get("Environment", []) for entry in shlex.split(value))
        problems += _env_problems(env, f"{at}: [Service] Environment", inline=True)
        if path.name == "whistle-worker@.service" and env.get("WHISTLE_WORKER_ID") != "%i":
            problems.append(f"{at}: [Service] Environment must set WHISTLE_WORKER_ID=%i (the instance is the worker id)")
        exec_start = service.get("ExecStart", [])
        if len(exec_start) != 1 or not shlex.split(exec_start[0])[0].endswith("/whistle"):
            problems.append(f"{at}: [Service] ExecStart must run one `whistle` command, not {exec_start}")
            continue
        problem, _context = _parse(cli, [arg.replace("%i", "worker-1") for arg in shlex.split(exec_start[0])[1:]])
        if problem:
            problems.append(f"{at}: [Service] ExecStart: {problem}")
    if not env_example.exists():
        problems.append(f"{_name(env_example)} is missing (the keys of {SYSTEMD_ENV_FILE})")
    else:
        problems += _env_problems(_env_values(env_example), _name(env_example), inline=False)
    return problems


# ---------------------------------------------------------------------------------------------- compose


def _whistle_service_problems(service: Mapping[str, Any], env: dict[str, str], cli: Command, base: Path, at: str) -> list[str]:
    build = service["build"]
    context = base / (build.get("context", ".") if isinstance(build, dict) else build)
    dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
    problems = [] if dockerfile.is_file() else [f"{at}.build: {dockerfile} does not exist"]
    command = service.get("command")
    if not isinstance(command, list) or not all(isinstance(arg, str) for arg in command):
        return [*problems, f"{at}.command: a list of `whistle` arguments, not {command!r}"]
    problem, context_ = _parse(cli, command)
    if problem or context_ is None:
        return [*problems, f"{at}.command: {problem}"]
    ports = [str(port).rsplit(":", 1)[-1] for port in _listed(service.get("ports"))]
    if command[0] not in SERVERS:
        return [*problems, *([f"{at}.ports: `whistle {command[0]}` serves no port"] if ports else [])]
    try:
        settings = Settings.from_env({key: value for key, value in env.items() if key.startswith("WHISTLE_")})
    except ConfigError as exc:
        return [*problems, f"{at}.environment: {exc}"]
    host_field, port_field = SERVERS[command[0]]
    host = context_.params.get("host") or getattr(settings, host_field)
    port = str(context_.params.get("port") or getattr(settings, port_field))
    if host in LOOPBACK:
        problems.append(f"{at}: `whistle {command[0]}` listens on {host} inside its container (set WHISTLE_{host_field.upper()})")
    problems += [f"{at}.ports: container port {published} is not the one it listens on, {port} (WHISTLE_{port_field.upper()})"
                 for published in ports if published != port]
    if not ports:
        problems.append(f"{at}.ports: `whistle {command[0]}` serves {port} but publishes nothing")
    health = " ".join(map(str, _listed((service.get("healthcheck") or {}).get("test"))))
    if re.search(rf"://[\w.]+:{port}/", health) is None:
        problems.append(f"{at}.healthcheck: none asks port {port}")
    return problems


def _parse(cli: Command, args: list[str]) -> tuple[str | None, typer.Context | None]:
    """Parse `whistle ARGS` as the CLI would, without running it: (the problem, or None; the leaf command's context)."""
    command, path, rest = cli, ["whistle"], list(args)
    while isinstance(command, TyperGroup):
        if not rest:
            return f"`{' '.join(path)}` needs a subcommand", None
        name = rest.pop(0)
        sub = command.commands.get(name)
        if sub is None:
            return f"`{' '.join(path)}` has no subcommand {name!r} (it has {', '.join(sorted(command.commands))})", None
        command, path = sub, [*path, name]
    try:
        return None, command.make_context(" ".join(path), list(rest))  # click consumes the list it parses
    except typer.TyperException as exc:  # click's usage errors, as typer vendors them
        return f"`{' '.join([*path, *rest])}`: {exc.format_message()}", None


def _kafka_problems(document: Mapping[str, Any]) -> list[str]:
    """The clients' Kafka settings against the nodes: SCRAM users and mechanism, listener protocol, bootstrap hosts."""
    start, properties = INFRA / "kafka" / "compose-start.sh", INFRA / "kafka" / "compose-server.properties"
    scram = re.findall(r"--add-scram \"([\w-]+)=\[name=(\w+),", start.read_text())
    config = dict(line.split("=", 1) for line in properties.read_text().splitlines() if "=" in line and not line.startswith("#"))
    protocols = dict(pair.split(":") for pair in config["listener.security.protocol.map"].split(","))
    services = document.get("services") or {}
    problems = []
    for name, service in services.items():
        env = _environment(service.get("environment"))
        if "build" not in service or "WHISTLE_KAFKA_BOOTSTRAP_SERVERS" not in env:
            continue
        at = f"{_name(COMPOSE)}: services.{name}.environment"
        if (env.get("WHISTLE_KAFKA_SASL_MECHANISM"), env.get("WHISTLE_KAFKA_SASL_USERNAME")) not in scram:
            problems.append(f"{at}: WHISTLE_KAFKA_SASL_MECHANISM / _USERNAME name no user {_name(start)} creates ({scram})")
        if env.get("WHISTLE_KAFKA_SECURITY_PROTOCOL") != protocols[config["inter.broker.listener.name"]]:
            problems.append(f"{at}: WHISTLE_KAFKA_SECURITY_PROTOCOL is not the brokers' listener protocol in {_name(properties)}")
        for server in env["WHISTLE_KAFKA_BOOTSTRAP_SERVERS"].split(","):
            host, _, port = server.partition(":")
            if host not in services or port != config["listeners"].split(",")[0].rsplit(":", 1)[-1]:
                problems.append(f"{at}: WHISTLE_KAFKA_BOOTSTRAP_SERVERS names {server}, not a Kafka service's listener")
    return problems


def _clickhouse_problems(document: Mapping[str, Any]) -> list[str]:
    """compose-users.xml has the local stack's users (same profiles, same databases), with passwords its env file sets."""
    compose_users = INFRA / "clickhouse" / "compose-users.xml"
    at = _name(compose_users)
    local, deployed = ET.fromstring(clickhouse_users_xml(Settings())), ET.parse(compose_users).getroot()
    problems = []
    clickhouse_env: dict[str, str] = {}
    for env_file in _listed((document.get("services") or {}).get("clickhouse", {}).get("env_file")):
        path = _env_file(COMPOSE.parent / env_file)
        clickhouse_env.update(_env_values(path) if path else {})
    for user in _children(local, "users"):
        other = deployed.find(f"users/{user.tag}")
        if other is None:
            problems.append(f"{at}: users.{user.tag} (the local stack's) is missing")
            continue
        for key in ("profile", "allow_databases"):
            if _text(user.find(key)) != _text(other.find(key)):
                problems.append(f"{at}: users.{user.tag}.{key} is {_text(other.find(key))!r}, the local stack's {_text(user.find(key))!r}")
        password = other.find("password")
        variable = "" if password is None else password.get("from_env", "")
        if variable not in clickhouse_env:
            problems.append(f"{at}: users.{user.tag}.password reads {variable or 'no variable'}, which the clickhouse service's env_file does not set")
    for profile in _children(local, "profiles"):
        for setting in profile:
            value = _text(deployed.find(f"profiles/{profile.tag}/{setting.tag}"))
            if profile.tag != "default" and value != _text(setting):
                problems.append(f"{at}: profiles.{profile.tag}.{setting.tag} is {value!r}, the local stack's {_text(setting)!r}")
    return problems


# ---------------------------------------------------------------------------------------------- env and README


def _documented_problems(document: Mapping[str, Any]) -> list[str]:
    """Every key of an env file, and every WHISTLE_* variable the compose file sets, is named in README's section."""
    documented = documented_names(README.read_text())
    names: dict[str, str] = {}
    for name, service in (document.get("services") or {}).items():
        names.update({key: f"{_name(COMPOSE)}: services.{name}.environment" for key in _environment(service.get("environment"))
                      if key.startswith("WHISTLE_")})
    for path in [*sorted((INFRA / "secrets").glob("*.env.example")), SYSTEMD / "whistle.env.example"]:
        names.update({key: _name(path) for key in _env_values(path)} if path.exists() else {})
    return [f"{where}: {key} is not documented in README.md (\"Production configuration\")"
            for key, where in sorted(names.items()) if key not in documented]


def documented_names(readme: str) -> set[str]:
    """The variables README's "Production configuration" names, `WHISTLE_X_Y` / `_Z` rows expanded to WHISTLE_X_Z."""
    section = readme.split("## Production configuration", 1)[-1].split("\n## ", 1)[0]
    names, known = set(), Settings.env_names()
    for line in section.splitlines():
        full = None
        for token in re.findall(r"`([A-Z_][A-Z0-9_]*)`", line):
            if not token.startswith("_"):
                full = token
                names.add(token)
            elif full is not None:
                parts = full.split("_")
                names.update(f"{'_'.join(parts[:cut])}{token}" for cut in range(1, len(parts))
                             if f"{'_'.join(parts[:cut])}{token}" in known)
    return names


def _env_problems(env: Mapping[str, Any], at: str, *, inline: bool) -> list[str]:
    known = Settings.env_names()
    problems = [f"{at}: {key} is no Settings field (whistle/ground/settings.py)" for key in env
                if key.startswith("WHISTLE_") and key not in known]
    if inline:
        problems += [f"{at}: {key} is a secret: put it in an env file or a secret, not inline" for key in env
                     if known.get(key) or re.search(r"PASSWORD|SECRET", key)]
    return problems


def _env_file(path: Path) -> Path | None:
    """An env file, or its committed example (the file itself holds secrets and is not committed)."""
    example = path.with_name(path.name + ".example")
    return path if path.exists() else example if example.exists() else None


def _env_values(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def _environment(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {str(key): str(item) for key, item in value.items()}
    return {key: item for key, _, item in (str(entry).partition("=") for entry in _listed(value))}


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return list(value)
    return list(value) if isinstance(value, list) else [value]


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections: each key's values in order (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _children(root: ET.Element, tag: str) -> list[ET.Element]:
    element = root.find(tag)
    return [] if element is None else list(element)


def _text(element: ET.Element | None) -> str:
    return "" if element is None else "".join(element.itertext()).strip()


def _name(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)

