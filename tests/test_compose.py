"""Structure of docker-compose.yml and deploy/Dockerfile: services, builds, health, wiring, secrets.

No Docker engine is needed: the compose file is parsed with PyYAML and checked against the
services' settings classes and the files in the repository.
"""

from __future__ import annotations

import importlib
import os
import re
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lazaretto_core.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# compose service name -> import name (the Dockerfile's SERVICE arg)
APP_SERVICES = {
    "policy": "policy",
    "provisioner": "provisioner",
    "cmts-agent": "cmts_agent",
    "portal": "portal",
    "detector-snort": "detector_snort",
    "detector-smtp": "detector_smtp",
}
PEERS = ("rabbitmq", "postgres", "kea", "bind", "portal-tls", "lab-cmts")
# Lab profile only, nothing depends on them (tests/test_observability.py checks them).
OBSERVABILITY = ("prometheus", "grafana", "jaeger")
# Steps that run once and exit; services wait for them to complete instead of being healthy.
ONE_SHOTS = ("bus-users",)
PORTAL_PORTS = ("8080:8080", "443:8443", "80:8081")
ADMIN_PORTS = {"policy": 8400, "provisioner": 8300, "cmts-agent": 8500}
SECRET_NAME = re.compile(r"token|secret|password|passwd|_pass$|community", re.IGNORECASE)
# The whole value is one ${VAR...} interpolation.
INTERPOLATION_ONLY = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:[:?-][^}]*)?\}$")
URL_CREDENTIALS = re.compile(r"://[^:/@\s]+:(?P<password>[^@\s]+)@")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict)
    return doc


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whichever of compose's two forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def settings_class(module: str) -> type[ServiceSettings]:
    settings = importlib.import_module(f"{module}.settings")
    classes = [
        value
        for value in vars(settings).values()
        if isinstance(value, type) and issubclass(value, ServiceSettings) and value is not ServiceSettings
    ]
    assert len(classes) == 1, f"{module}.settings should define one ServiceSettings subclass: {classes}"
    return classes[0]


def walk_strings(node: object, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (path, string) in the document, keys included as the path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk_strings(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


def test_every_expected_service_is_defined(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == set(APP_SERVICES) | set(PEERS) | set(ONE_SHOTS) | set(OBSERVABILITY)


@pytest.mark.parametrize(("name", "module"), sorted(APP_SERVICES.items()))
def test_app_service_builds_from_the_one_dockerfile(compose: dict[str, Any], name: str, module: str) -> None:
    build = services(compose)[name]["build"]
    assert build["context"] == "."
    assert build["dockerfile"] == "deploy/Dockerfile"
    assert build["args"] == {"SERVICE": module}
    # The module the image will run (`python -m <SERVICE>`) exists in the workspace.
    package_dir = ROOT / "services" / name / "src" / module
    assert (package_dir / "__init__.py").is_file()
    assert (package_dir / "__main__.py").is_file()
    assert (package_dir / "settings.py").is_file()
    pyproject = (ROOT / "services" / name / "pyproject.toml").read_text()
    assert f'name = "lazaretto-{name}"' in pyproject


@pytest.mark.parametrize("name", sorted(APP_SERVICES) + list(PEERS) + list(OBSERVABILITY))
def test_every_service_has_a_healthcheck(compose: dict[str, Any], name: str) -> None:
    healthcheck = services(compose)[name].get("healthcheck")
    assert healthcheck, f"{name} has no healthcheck"
    assert not healthcheck.get("disable", False)
    assert healthcheck["test"][0] in ("CMD", "CMD-SHELL")


def test_broker_and_database_have_the_expected_probes(compose: dict[str, Any]) -> None:
    svc = services(compose)
    rabbitmq_probe = ["rabbitmq-diagnostics", "-q", "check_port_connectivity"]
    assert svc["rabbitmq"]["healthcheck"]["test"][1:] == rabbitmq_probe
    assert "pg_isready" in svc["postgres"]["healthcheck"]["test"]


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    svc = services(compose)
    for name, service in svc.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs the long form with conditions"
        for target, spec in depends_on.items():
            assert target in svc, f"{name} depends on unknown {target}"
            assert "lab" not in svc[target].get("profiles", []), f"{name} depends on lab-only {target}"
            expected = "service_completed_successfully" if target in ONE_SHOTS else "service_healthy"
            assert spec == {"condition": expected}, f"{name} -> {target}: {spec}"
    for name in APP_SERVICES:
        assert "rabbitmq" in svc[name]["depends_on"], f"{name} does not wait for rabbitmq"
        assert "bus-users" in svc[name]["depends_on"], f"{name} does not wait for its broker user"
    for name in ("policy", "provisioner", "kea"):
        assert "postgres" in svc[name]["depends_on"], f"{name} does not wait for postgres"


def test_lab_cmts_is_only_in_the_lab_profile(compose: dict[str, Any]) -> None:
    svc = services(compose)
    assert svc["lab-cmts"]["profiles"] == ["lab"]
    assert [name for name, s in svc.items() if "profiles" in s] == ["lab-cmts", *OBSERVABILITY]
    command = " ".join(svc["lab-cmts"]["command"])
    assert "snmpd" in command
    mounts = svc["lab-cmts"]["volumes"]
    assert any(m.startswith("./libs/lazaretto-lab/src/lazaretto_lab/cmts_emulator.py:") for m in mounts)


def test_no_secret_is_a_literal(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert INTERPOLATION_ONLY.match(value), f"{name}.{key} must be a ${{VAR:?}} interpolation"
    for path, value in walk_strings(compose):
        for match in URL_CREDENTIALS.finditer(value):
            assert INTERPOLATION_ONLY.match(match["password"]), f"literal password in a URL at {path}"


def test_required_secrets_fail_loudly_when_unset(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert ":?" in value, f"{name}.{key} must use ${{VAR:?message}} so it cannot be empty"


@pytest.mark.parametrize(("name", "module"), sorted(APP_SERVICES.items()))
def test_every_setting_passed_exists(compose: dict[str, Any], name: str, module: str) -> None:
    fields = settings_class(module).model_fields
    env = environment(services(compose)[name])
    lazaretto_vars = [key for key in env if key.startswith("LAZARETTO_")]
    assert "LAZARETTO_AMQP_URL" in lazaretto_vars
    for key in lazaretto_vars:
        field = key.removeprefix("LAZARETTO_").lower()
        assert field in fields, f"{name}: {key} is not a field of {module}.settings"


@pytest.mark.parametrize(("name", "module"), sorted(APP_SERVICES.items()))
def test_required_settings_are_provided(compose: dict[str, Any], name: str, module: str) -> None:
    env = environment(services(compose)[name])
    for field, info in settings_class(module).model_fields.items():
        if info.is_required():
            assert f"LAZARETTO_{field.upper()}" in env, f"{name} lacks required LAZARETTO_{field.upper()}"


@pytest.mark.parametrize(("name", "module"), sorted(APP_SERVICES.items()))
def test_services_listen_where_peers_and_healthchecks_look(
    compose: dict[str, Any], name: str, module: str
) -> None:
    env = environment(services(compose)[name])
    assert env["LAZARETTO_HTTP_HOST"] == "0.0.0.0"
    port = int(env["LAZARETTO_HTTP_PORT"])
    assert port == settings_class(module).model_fields["http_port"].default
    for key, value in env.items():
        # URLs of sibling services use the compose name and that service's port.
        for host, url_port in re.findall(r"http://([a-z-]+):(\d+)", value):
            if host in APP_SERVICES:
                assert environment(services(compose)[host])["LAZARETTO_HTTP_PORT"] == url_port, key


def test_only_portal_and_admin_ports_are_published_on_loopback(compose: dict[str, Any]) -> None:
    published: dict[str, list[str]] = {
        name: [str(p) for p in s.get("ports", [])] for name, s in services(compose).items()
    }
    for name, ports in published.items():
        for port in ports:
            if name == "portal":
                # The portal's own HTTP port, TLS on 443 and the catch-all on 80, on the garden side.
                assert port in {f"${{LAZARETTO_PORTAL_BIND:-127.0.0.1}}:{p}" for p in PORTAL_PORTS}, port
            else:
                assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    for name, port_number in ADMIN_PORTS.items():
        assert f"127.0.0.1:{port_number}:{port_number}" in published[name]
    assert not published["kea"]
    assert not published["bind"]
    assert not published["postgres"]


def test_provisioner_reaches_bind_at_its_fixed_address(compose: dict[str, Any]) -> None:
    svc = services(compose)
    bind_ip = svc["bind"]["networks"]["default"]["ipv4_address"]
    assert environment(svc["provisioner"])["LAZARETTO_DNS_SERVER"] == bind_ip
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert bind_ip.startswith(subnet.rsplit(".", 1)[0] + ".")


def test_bind_config_has_both_policy_zones_in_order() -> None:
    conf = (ROOT / "deploy" / "compose" / "bind" / "named.conf").read_text()
    policy = re.search(r"response-policy\s*\{(.*?)\}", conf, re.DOTALL)
    assert policy is not None
    assert re.findall(r'zone "([^"]+)"', policy.group(1)) == ["allow.rpz", "quarantine.rpz"]
    assert 'include "/run/named/tsig.key"' in conf
    assert "secret" not in conf.replace("tsig.key", "")


def test_dockerfile_is_parametrised_and_has_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG SERVICE$", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*lazaretto-healthcheck", text, re.MULTILINE)
    assert "/healthz" in text
    assert "uv sync --frozen --no-dev" in text
    assert re.search(r"^USER (?!root)", text, re.MULTILINE)
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", text, re.MULTILINE)
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text


def test_every_mounted_repo_file_exists(compose: dict[str, Any]) -> None:
    checked = 0
    for name, service in services(compose).items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source", "")
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
                checked += 1
        context = (service.get("build") or {}).get("context")
        if context:
            assert (ROOT / context).is_dir(), f"{name} builds from missing {context}"
            dockerfile = service["build"].get("dockerfile", "Dockerfile")
            # compose resolves the Dockerfile against the build context.
            assert (ROOT / context / dockerfile).is_file(), f"{name} builds from missing {dockerfile}"
    assert checked >= 8
    init = ROOT / "deploy" / "compose" / "postgres" / "init-databases.sh"
    assert "CREATE DATABASE kea" in init.read_text()
    for own in ("lazaretto_policy", "lazaretto_cmts"):
        assert f"CREATE DATABASE {own} OWNER {own};" in init.read_text()
        assert f"REVOKE ALL ON DATABASE {own} FROM PUBLIC;" in init.read_text()
    kea_entrypoint = (ROOT / "deploy" / "compose" / "kea" / "entrypoint.sh").read_text()
    assert "db-init" in kea_entrypoint


def test_the_portal_tls_peer_makes_a_certificate_devices_can_verify_for_the_portal_name(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    svc = services(compose)
    portal_env = environment(svc["portal"])
    assert "portal-tls" in svc["portal"]["depends_on"]
    assert portal_env["LAZARETTO_TLS_CERT_FILE"].startswith("/etc/lazaretto/tls/")
    assert "portal-tls:/etc/lazaretto/tls:ro" in svc["portal"]["volumes"]
    # The compose portal name, the public URL's host and option 114's host are one name.
    name = environment(svc["portal-tls"])["LAZARETTO_PORTAL_NAME"].split(":-")[1].rstrip("}")
    assert portal_env["LAZARETTO_PUBLIC_URL"] == f"${{LAZARETTO_PUBLIC_URL:-https://{name}/}}"
    kea = (ROOT / "deploy" / "compose" / "kea" / "kea-dhcp4.json").read_text()
    assert f'"data": "https://{name}/captive-portal/api"' in kea
    # When the peer's script runs (openssl, as in its image)
    script = ROOT / "deploy" / "compose" / "tls" / "make-portal-cert.sh"
    env = {"PATH": "/usr/bin:/bin", "TLS_DIR": str(tmp_path), "TLS_KEY_OWNER": f"{os.getuid()}:{os.getgid()}"}
    subprocess.run([str(script), "--once"], env=env, check=True, capture_output=True)
    # Then a client trusting its CA verifies the portal's certificate for that name, and only that name
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "portal.pem", tmp_path / "portal-key.pem")
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            tmp_path / "ca.pem",
            "-verify_hostname",
            name,
            tmp_path / "portal.pem",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    other = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            tmp_path / "ca.pem",
            "-verify_hostname",
            "x.test",
            tmp_path / "portal.pem",
        ],
        capture_output=True,
        check=False,
    )
    assert other.returncode != 0
    assert oct((tmp_path / "portal-key.pem").stat().st_mode & 0o777) == "0o600"
    # and a second run keeps the certificate the devices already trust
    before = (tmp_path / "ca.pem").read_bytes()
    subprocess.run([str(script), "--once"], env=env, check=True, capture_output=True)
    assert (tmp_path / "ca.pem").read_bytes() == before


def test_each_service_connects_as_its_own_broker_user_which_bus_users_creates(
    compose: dict[str, Any],
) -> None:
    from lazaretto_core.bus_users import ACCOUNTS, password_variable

    svc = services(compose)
    setup = environment(svc["bus-users"])
    assert svc["bus-users"]["command"][:3] == ["python", "-m", "lazaretto_core.bus_users"]
    assert svc["bus-users"]["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}
    assert "management" in svc["rabbitmq"]["image"]  # bus-users posts to the management API
    assert {a.service for a in ACCOUNTS} == set(APP_SERVICES)
    for account in ACCOUNTS:
        variable = password_variable(account.service)
        assert setup[variable] == f"${{{variable}:?set {variable}}}"
        url = environment(svc[account.service])["LAZARETTO_AMQP_URL"]
        assert url == f"amqp://lazaretto-{account.service}:${{{variable}:?set {variable}}}@rabbitmq:5672/"
        example = (ROOT / "deploy" / "compose" / "env.example").read_text()
        assert f"\n{variable}=\n" in example
