"""The deployment files (deploy/), checked with the tools these machines have: there is no
Docker daemon here, so nothing is run in a container. What is checked, and with what:

- YAML and JSON parse; the compose files against the Compose Specification's JSON schema (the
  copy check-jsonschema ships) and through `docker compose config` (the Compose CLI alone,
  no daemon) when a Compose binary is installed;
- the env file names every setting of the Settings object and nothing else, and loads;
- every AVL process in compose gets valid settings, its own client id, metrics port, spool;
- systemd units with `systemd-analyze verify`; the install script staged into a directory
  (DESTDIR) and with shellcheck;
- HAProxy (`haproxy -c`), nginx (`nginx -t`, then for real: TLS in front of a real `avl api`),
  Mosquitto (a real broker on each config: authentication and the ACL), Prometheus (`promtool`);
- the Grafana dashboard and the alerts refer only to metrics the services define.

A tool that is missing skips its test with the reason; deploy/README.md says how to install them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest
import yaml

from avl.config import Settings, load_settings
from avl.embedded import free_port, wait_for_port
from tests.deploy.procs import AvlProcess
from tests.deploy.promql import PLANNED, TARGET_LABELS, alert_exprs, dashboard_exprs, defined_metrics, parse

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"
ENV_EXAMPLE = DEPLOY / "avl.env.example"
AVL_BIN = Path(sys.executable).parent

AVL_COMMANDS = {"ingest", "diagnostics", "api", "migrate"}
PER_PROCESS = {"AVL_MQTT_CLIENT_ID", "AVL_METRICS_PORT", "AVL_DATA_DIR", "AVL_API_PORT"}


# Helpers ---------------------------------------------------------------------------------


class ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge-control tags (!reset, !override) read as plain values."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _tagged)
ComposeLoader.add_constructor("!override", _tagged)


def load_compose(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.load(f, Loader=ComposeLoader)  # noqa: S506 - a SafeLoader subclass


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (systemd's and Compose's common subset); quotes around a value removed."""
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"{path.name}:{number}: not KEY=VALUE: {line!r}"
        assert key not in out, f"{path.name}:{number}: {key} set twice"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings an `avl` process started with ``env`` would get."""
    with monkeypatch.context() as m:
        for key in [k for k in os.environ if k.startswith("AVL_")]:
            m.delenv(key)
        for key, value in env.items():
            if key.startswith("AVL_"):
                m.setenv(key, value)
        return load_settings()


def setting_names() -> set[str]:
    return {f"AVL_{name.upper()}" for name in Settings.model_fields}


def tool(name: str) -> str:
    path = shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, AVL_BIN / name) if p.exists()), None)
    if path is None:
        pytest.skip(f"{name} is not installed here (deploy/README.md, 'Validating the files', says how to get it)")
    return path


def compose_command() -> list[str]:
    """The Compose CLI: `docker compose` (plugin) or a standalone `docker-compose` v2."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    for candidate in (shutil.which("docker-compose"), str(AVL_BIN / "docker-compose")):
        if candidate and Path(candidate).exists():
            out = subprocess.run([candidate, "version"], capture_output=True, text=True)
            if out.returncode == 0 and "v2." in out.stdout:
                return [candidate]
    pytest.skip("no Compose v2 CLI here: the docker client has no compose plugin and there is no docker-compose v2 "
                "(deploy/README.md, 'Validating the files')")


def _spawn(command: list[str]) -> subprocess.Popen[bytes]:
    """A server process for one test (the caller stops it)."""
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def staged_deploy(tmp_path: Path) -> Path:
    """A copy of deploy/ with compose/avl.env made from the example, as an operator would."""
    target = tmp_path / "repo"
    shutil.copytree(DEPLOY, target / "deploy")
    shutil.copy(ENV_EXAMPLE, target / "deploy" / "compose" / "avl.env")
    return target / "deploy"


# Files parse ----------------------------------------------------------------------------


def test_every_yaml_and_json_file_parses() -> None:
    yamls = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
    jsons = sorted(DEPLOY.rglob("*.json"))
    assert len(yamls) >= 6 and jsons
    for path in yamls:
        assert isinstance(load_compose(path), dict), path
    for path in jsons:
        json.loads(path.read_text())


# The env file --------------------------------------------------------------------------------


def test_env_example_names_every_setting_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    env = read_env_file(ENV_EXAMPLE)
    assert set(env) - setting_names() == set(), "keys that are not settings"
    assert setting_names() - set(env) == set(), "settings missing from deploy/avl.env.example"
    settings = settings_from(env, monkeypatch)  # every value is valid
    assert settings.database_url is not None and settings.mqtt_url, "a deployment never runs the embedded services"
    assert settings.mqtt_client_id in ("", None) and not settings.smpp_host
    assert settings.ports == {} and settings.udp is True and str(settings.data_dir) == "/var/lib/avl"


# Docker Compose -------------------------------------------------------------------------------


def _compose_schema() -> dict[str, Any]:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (the Compose Specification schema) is not "
                        "installed: .venv/bin/pip install check-jsonschema")
    from importlib.resources import files

    return json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())


@pytest.mark.parametrize("name", ["compose.yaml", "compose.emqx.yaml"])
def test_compose_files_match_the_compose_specification(name: str) -> None:
    import jsonschema

    schema = _compose_schema()
    document = load_compose(COMPOSE / name)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_structure() -> None:
    """Without the Compose CLI: health checks, volumes, settings, images, as written."""
    doc = load_compose(COMPOSE / "compose.yaml")
    services = doc["services"]
    assert {"timescaledb", "mqtt", "migrate", "proxy", "prometheus", "grafana"} <= set(services)
    ingest = sorted(s for s in services if s.startswith("ingest-"))
    assert len(ingest) >= 2 and len([s for s in services if s.startswith("diagnostics-")]) >= 2
    assert services["timescaledb"]["image"].split(":-")[-1].startswith("timescale/timescaledb:")
    declared = set(doc["volumes"])
    used = set()
    for name, svc in services.items():
        if name != "migrate":
            assert "healthcheck" in svc, f"{name} has no health check"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "$")):
                used.add(source)
        if (svc.get("command") or [None])[0] in AVL_COMMANDS:
            assert svc["env_file"][0]["path"] == "./avl.env", name
            assert svc["network_mode"] == "host", name  # SO_REUSEPORT across processes, device addresses
    assert used == declared, "named volumes used and declared differ"
    for name in ingest:
        assert any(v.endswith(":/var/lib/avl") for v in services[name]["volumes"]), f"{name}: spool not on a volume"


def test_docker_compose_config_resolves_the_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compose = compose_command()
    deploy = staged_deploy(tmp_path)
    project = deploy / "compose"
    run = [*compose, "--project-directory", str(project), "-f", str(project / "compose.yaml"),
           "--env-file", str(project / ".env.example")]
    out = subprocess.run([*run, "config", "--format", "json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)
    services = config["services"]

    avl = {name: svc for name, svc in services.items() if (svc.get("command") or [None])[0] in AVL_COMMANDS}
    settings = {name: settings_from(svc["environment"], monkeypatch) for name, svc in avl.items()}
    ingest = sorted(n for n in avl if avl[n]["command"] == ["ingest"])
    api = sorted(n for n in avl if avl[n]["command"] == ["api"])
    assert len(ingest) >= 2 and len(api) >= 2
    # Every process: the deployment's database and broker (the secrets from .env), never embedded ones.
    for name, s in settings.items():
        assert s.database_url is not None and "@127.0.0.1:5432/" in s.database_url.get_secret_value(), name
        assert s.mqtt_url and s.mqtt_url.endswith("@127.0.0.1:1883"), name
    # Ingest processes share ports and group, and differ in client id, metrics port and spool volume.
    assert len({settings[n].mqtt_client_id for n in ingest}) == len(ingest)
    assert all(settings[n].mqtt_client_id for n in ingest)
    assert len({settings[n].metrics_port for n in ingest}) == len(ingest)
    assert len({settings[n].mqtt_group for n in ingest}) == 1
    assert len({settings[n].port_for("teltonika") for n in ingest}) == 1
    spools = [next(v["source"] for v in avl[n]["volumes"] if v["target"] == "/var/lib/avl") for n in ingest]
    assert len(set(spools)) == len(ingest)
    for n in ingest:
        assert avl[n]["ulimits"]["nofile"]["soft"] >= 1 << 20
    # Prometheus scrapes exactly the ingest metrics ports; nginx proxies exactly the API ports.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    ingest_job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "avl-ingest")
    targets = {t for c in ingest_job["static_configs"] for t in c["targets"]}
    assert targets == {f"127.0.0.1:{settings[n].metrics_port}" for n in ingest}
    upstream = re.search(r"upstream avl_api \{(.*?)\}", (DEPLOY / "nginx" / "avl.conf").read_text(), re.S)
    assert upstream is not None
    assert set(re.findall(r"server 127\.0\.0\.1:(\d+)", upstream.group(1))) == {str(settings[n].api_port) for n in api}
    # Health checks everywhere but the one-shot migration; a TimescaleDB image.
    for name, svc in services.items():
        if name != "migrate":
            assert svc.get("healthcheck", {}).get("test"), name
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert "pgdata" in config["volumes"]

    # The EMQX variant resolves too; and a missing secret stops Compose with a message saying which.
    emqx_env = tmp_path / "emqx.env"
    emqx_env.write_text((project / ".env.example").read_text())
    out = subprocess.run([*compose, "--project-directory", str(project), "-f", str(project / "compose.yaml"), "-f",
                          str(project / "compose.emqx.yaml"), "--env-file", str(emqx_env), "config", "--format",
                          "json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    emqx = json.loads(out.stdout)["services"]
    assert emqx["mqtt"]["image"].startswith("emqx/emqx:") and emqx["mqtt-2"]["image"].startswith("emqx/emqx:")
    assert not any("mosquitto" in str(v) for v in emqx["mqtt"].get("volumes", []))
    assert emqx["ingest-2"]["environment"]["AVL_MQTT_URL"].endswith("@127.0.0.1:1884")
    no_secret = tmp_path / "empty.env"
    no_secret.write_text("")
    out = subprocess.run([*compose, "--project-directory", str(project), "-f", str(project / "compose.yaml"),
                          "--env-file", str(no_secret), "config", "-q"], capture_output=True, text=True, timeout=60)
    # Compose names the first missing secret it meets (POSTGRES_PASSWORD, GRAFANA_ADMIN_PASSWORD...).
    assert out.returncode != 0 and "required variable" in out.stderr + out.stdout


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint")
    out = subprocess.run([hadolint, "--no-color", str(COMPOSE / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # The build context is the repository root: what the Dockerfile copies exists, and the
    # Dockerfile's own ignore file lets it through.
    text = (COMPOSE / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(\S+(?: \S+)*?) \S+$", text, re.M):
        for name in source.split():
            assert (ROOT / name).exists(), name
            assert f"!{name.rstrip('/')}" in (COMPOSE / "Dockerfile.dockerignore").read_text().replace("/\n", "\n"), name


# systemd and the install script ---------------------------------------------------------------------


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    units = tmp_path / "units"
    units.mkdir()
    for unit in (DEPLOY / "debian" / "systemd").iterdir():
        # The real executable (the units name /opt/avl/venv/bin/avl, which verify checks exists).
        (units / unit.name).write_text(unit.read_text().replace("/opt/avl/venv/bin/avl", str(AVL_BIN / "avl")))
    names = ["avl.target", "avl-migrate.service"]
    for template, instance in (("avl-ingest@", "9108"), ("avl-diagnostics@", "9118"), ("avl-api@", "8081")):
        (units / f"{template}{instance}.service").symlink_to(units / f"{template}.service")
        names.append(f"{template}{instance}.service")
    out = subprocess.run([analyze, "verify", "--man=no", *[str(units / n) for n in names]], capture_output=True,
                         text=True, timeout=60, cwd=units)
    problems = [line for line in (out.stdout + out.stderr).splitlines() if "avl" in line]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr
    # Per-process settings go through env(1) on the command line: EnvironmentFile= would override Environment=.
    # Each ingest unit is one process (its own metrics port and spool): AVL_INGEST_PROCESSES=1.
    for template, keys in (("avl-ingest@.service", PER_PROCESS - {"AVL_API_PORT"} | {"AVL_INGEST_PROCESSES"}),
                           ("avl-api@.service", {"AVL_API_PORT", "AVL_DATA_DIR"})):
        text = (DEPLOY / "debian" / "systemd" / template).read_text()
        exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        assert exec_start.startswith("ExecStart=/usr/bin/env ")
        assert not re.search(r"^Environment=", text, re.M), template
        assert {m for m in re.findall(r"(AVL_\w+)=", exec_start)} == keys, template


def test_install_script_stages_the_files_the_units_expect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool("bash")
    stage = tmp_path / "stage"
    env = {**os.environ, "DESTDIR": str(stage), "INGEST_PROCESSES": "3", "AVL_DOMAIN": "avl.test"}
    out = subprocess.run(["bash", str(DEPLOY / "debian" / "install.sh")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(staged, not run) env DEBIAN_FRONTEND=noninteractive apt-get install" in out.stdout
    # The settings: every key, generated passwords in the URLs, and they load.
    installed = read_env_file(stage / "etc/avl/avl.env")
    assert set(installed) == setting_names()
    example = read_env_file(ENV_EXAMPLE)
    assert installed["AVL_DATABASE_URL"] != example["AVL_DATABASE_URL"]
    assert installed["AVL_MQTT_URL"] != example["AVL_MQTT_URL"]
    settings_from(installed, monkeypatch)
    assert oct((stage / "etc/avl/avl.env").stat().st_mode & 0o777) == "0o640"
    # What the units and configs refer to is where they look for it.
    wants = sorted(p.name for p in (stage / "etc/systemd/system/avl.target.wants").iterdir())
    assert wants == ["avl-api@8081.service", "avl-api@8082.service", "avl-diagnostics@9118.service",
                     "avl-diagnostics@9119.service", "avl-ingest@9108.service", "avl-ingest@9109.service",
                     "avl-ingest@9110.service", "avl-migrate.service"]
    for link in (stage / "etc/systemd/system/avl.target.wants").iterdir():
        assert link.resolve().exists(), link
    for path in ("etc/mosquitto/conf.d/avl.conf", "etc/mosquitto/avl.acl", "etc/nginx/sites-enabled/avl",
                 "etc/avl/tls/fullchain.pem", "etc/avl/tls/privkey.pem", "etc/sysctl.d/60-avl.conf",
                 "opt/avl/src/pyproject.toml", "opt/avl/src/deploy/README.md"):
        assert (stage / path).exists(), path
    mosquitto = (stage / "etc/mosquitto/conf.d/avl.conf").read_text()
    assert "password_file /etc/mosquitto/avl.passwd" in mosquitto and "acl_file /etc/mosquitto/avl.acl" in mosquitto
    assert re.search(r"postgresql/\d+/main/conf.d/avl.conf", "\n".join(str(p) for p in stage.rglob("avl.conf")))
    # Run again: an upgrade keeps the settings (and so the passwords).
    again = subprocess.run(["bash", str(DEPLOY / "debian" / "install.sh")], env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and read_env_file(stage / "etc/avl/avl.env") == installed


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    scripts = [DEPLOY / "debian" / "install.sh", DEPLOY / "mosquitto" / "compose-start.sh"]
    out = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_postgresql_settings_exist(db_url: str) -> None:
    names = [line.split("=")[0].strip() for line in (DEPLOY / "debian" / "postgresql-avl.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    with psycopg.connect(db_url) as conn:
        known = {r[0] for r in conn.execute("SELECT name FROM pg_settings").fetchall()}
    assert set(names) <= known, set(names) - known


# HAProxy, nginx ---------------------------------------------------------------------------------------


def test_haproxy_config_is_valid(tmp_path: Path) -> None:
    haproxy = tool("haproxy")
    config = DEPLOY / "haproxy" / "haproxy.cfg"
    out = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # Every ingest server gets the PROXY protocol, so the ingestor (AVL_PROXY_PROTOCOL) sees devices' addresses.
    text = config.read_text()
    servers = re.findall(r"^\s+server ingest-\S+ .*$", text, re.M)
    assert servers and all("send-proxy-v2" in line for line in servers)
    # The frontend binds every TCP device port the ingest service listens on by default.
    from ingest.protocols import DEFAULT_PORTS, get

    stream_ports = {port for name, port in DEFAULT_PORTS.items() if {"tcp", "http"} & set(get(name).transports)}
    assert {int(p) for p in re.findall(r"^\s+bind :(\d+)$", text, re.M)} >= stream_ports


def _self_signed(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-keyout", str(directory / "privkey.pem"), "-out",
                    str(directory / "fullchain.pem")], check=True, capture_output=True)


def _nginx_config(tmp_path: Path, http: int, https: int, api: list[int]) -> Path:
    """deploy/nginx/avl.conf with this machine's paths and free ports, in a minimal nginx.conf."""
    tls = tmp_path / "tls"
    _self_signed(tls)
    site = (DEPLOY / "nginx" / "avl.conf").read_text().replace("/etc/avl/tls", str(tls))
    site = re.sub(r"listen (\[::\]:)?80 ", f"listen 127.0.0.1:{http} ", site)
    site = re.sub(r"listen (\[::\]:)?443 ", f"listen 127.0.0.1:{https} ", site)
    site = site.replace(f"listen 127.0.0.1:{http} default_server;\n    listen 127.0.0.1:{http} default_server;",
                        f"listen 127.0.0.1:{http} default_server;")
    site = site.replace(f"listen 127.0.0.1:{https} ssl http2 default_server;\n    listen 127.0.0.1:{https} ssl http2 "
                        "default_server;", f"listen 127.0.0.1:{https} ssl http2 default_server;")
    for old, new in zip(("8081", "8082"), api, strict=True):
        site = site.replace(f"server 127.0.0.1:{old} ", f"server 127.0.0.1:{new} ")
    (tmp_path / "avl.conf").write_text(site)
    conf = tmp_path / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {tmp_path}/{kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf.write_text(f"{user}pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{\n    access_log off;\n{temp}\n    include {tmp_path}/avl.conf;\n}}\n")
    return conf


def test_nginx_config_is_valid(tmp_path: Path) -> None:
    nginx = tool("nginx")
    conf = _nginx_config(tmp_path, free_port(), free_port(), [free_port(), free_port()])
    out = subprocess.run([nginx, "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


async def test_nginx_terminates_tls_in_front_of_a_real_api(tmp_path: Path, db_url: str) -> None:
    nginx = tool("nginx")
    http, https, api_port, down_port = free_port(), free_port(), free_port(), free_port()
    conf = _nginx_config(tmp_path, http, https, [api_port, down_port])  # the second API process is down
    api = AvlProcess("api", "api", AvlProcess.environment(AVL_DATABASE_URL=db_url, AVL_API_PORT=str(api_port),
                                                          AVL_DATA_DIR=str(tmp_path / "api"), AVL_LOG_LEVEL="INFO"),
                     tmp_path / "api.log").start()
    proxy = _spawn([nginx, "-e", "stderr", "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"])
    try:
        assert await asyncio.to_thread(wait_for_port, api_port, 30), api.log()
        assert await asyncio.to_thread(wait_for_port, https, 10)
        context = ssl.create_default_context(cafile=str(tmp_path / "tls" / "fullchain.pem"))
        context.check_hostname = False

        def get(url: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
            class NoRedirect(urllib.request.HTTPRedirectHandler):
                def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                    return None

            opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
            try:
                with opener.open(url, timeout=10) as r:
                    return r.status, dict(r.headers), r.read()
            except urllib.error.HTTPError as e:
                return e.code, dict(e.headers), e.read()

        for _ in range(3):  # round robin: the process that is down is skipped
            status, headers, body = await asyncio.to_thread(get, f"https://127.0.0.1:{https}/health")
            assert status == 200 and json.loads(body)["status"] == "ok", body
            assert "max-age" in headers.get("Strict-Transport-Security", "")
        status, _, body = await asyncio.to_thread(get, f"https://127.0.0.1:{https}/api/v1/me")
        assert status == 401 and json.loads(body)["error"]  # the API's own answer, through the proxy
        status, headers, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{http}/api/v1/me")
        assert status == 301 and headers["Location"].startswith("https://")
        status, _, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{http}/health")  # local health check
        assert status == 200
    finally:
        proxy.terminate()
        proxy.wait(10)
        api.stop()


# Mosquitto ---------------------------------------------------------------------------------------------


def _mosquitto_config(kind: str, tmp_path: Path, port: int) -> Path:
    """deploy/mosquitto/<kind>.conf with this machine's paths and a free port."""
    data = tmp_path / "data"
    data.mkdir()
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    shutil.copy(DEPLOY / "mosquitto" / "acl", acl)
    passwd_tool = tool("mosquitto_passwd")
    for user, password in (("avl", "ingest-secret"), ("356307042441013", "device-secret")):
        subprocess.run([passwd_tool, *([] if passwd.exists() else ["-c"]), "-b", str(passwd), user, password],
                       check=True, capture_output=True)
    own = (DEPLOY / "mosquitto" / f"{kind}.conf").read_text()
    own = own.replace("listener 1883", f"listener {port} 127.0.0.1")
    own = own.replace("/mosquitto/data/passwd", str(passwd)).replace("/etc/mosquitto/avl.passwd", str(passwd))
    own = own.replace("/mosquitto/config/acl", str(acl)).replace("/etc/mosquitto/avl.acl", str(acl))
    own = own.replace("/mosquitto/data/", f"{data}/")
    if kind == "debian":  # as included by Debian's /etc/mosquitto/mosquitto.conf
        (tmp_path / "conf.d").mkdir()
        (tmp_path / "conf.d" / "avl.conf").write_text(own)
        main = (f"pid_file {tmp_path}/mosquitto.pid\npersistence true\npersistence_location {data}/\n"
                f"log_dest file {tmp_path}/mosquitto.log\ninclude_dir {tmp_path}/conf.d\n")
    else:
        main = own
    if os.geteuid() == 0:
        main += "user root\n"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(main)
    return conf


@pytest.mark.parametrize("kind", ["compose", "debian"])
async def test_mosquitto_config_authenticates_and_applies_the_acl(kind: str, tmp_path: Path) -> None:
    mosquitto = tool("mosquitto")
    port = free_port()
    conf = _mosquitto_config(kind, tmp_path, port)
    broker = _spawn([mosquitto, "-c", str(conf)])
    try:
        assert await asyncio.to_thread(wait_for_port, port, 10, broker), broker.stdout.read() if broker.stdout else ""
        common: dict[str, Any] = {"hostname": "127.0.0.1", "port": port, "timeout": 5}
        with pytest.raises(aiomqtt.MqttError):  # no anonymous clients
            async with aiomqtt.Client(**common):
                pass
        with pytest.raises(aiomqtt.MqttError):  # nor wrong passwords
            async with aiomqtt.Client(username="avl", password="wrong", **common):
                pass
        device = "356307042441013"
        async with aiomqtt.Client(username="avl", password="ingest-secret", identifier="avl-ingest-t", **common) as ingest:
            await ingest.subscribe("$share/avl-ingest/avl/in/#", qos=1)
            async with aiomqtt.Client(username=device, password="device-secret", **common) as dev:
                await dev.publish(f"avl/in/json/{device}", b'{"own": true}', qos=1)
                await dev.publish("avl/in/json/356307042441021", b'{"other": true}', qos=1)  # not its own topic
                await dev.publish(f"avl/in/json/{device}", b'{"last": true}', qos=1)
            got = []
            async with asyncio.timeout(5):
                async for message in ingest.messages:
                    got.append((str(message.topic), bytes(message.payload)))
                    if len(got) == 2:
                        break
            await asyncio.sleep(0.5)  # a third (the refused one) would have arrived by now
            assert got == [(f"avl/in/json/{device}", b'{"own": true}'), (f"avl/in/json/{device}", b'{"last": true}')]
    finally:
        broker.terminate()
        broker.wait(10)


# Prometheus and Grafana ------------------------------------------------------------------------------------


def test_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = tool("promtool")
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml",
                                                                           str(tmp_path / "alerts.yml"))
    (tmp_path / "prometheus.yml").write_text(config)
    out = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _check_exprs(exprs: list[tuple[str, str]]) -> None:
    metrics = defined_metrics()
    for where, expr in exprs:
        selectors, grouping = parse(expr)
        assert selectors, (where, expr)
        labels = set(TARGET_LABELS)
        for sel in selectors:
            if sel.metric == "up":
                continue
            assert sel.metric in metrics, f"{where}: {sel.metric} is not a metric the services define"
            labels |= set(metrics[sel.metric])
            for label, _, _ in sel.matchers:
                assert label in set(metrics[sel.metric]) | TARGET_LABELS, f"{where}: {sel.metric} has no label {label}"
        assert grouping <= labels, f"{where}: grouping by {grouping - labels}"


def test_dashboard_panels_use_only_exported_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "avl.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for panel in dash["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid and panel["targets"], panel["title"]
    exprs = dashboard_exprs()
    _check_exprs(exprs)
    used = {sel.metric for _, e in exprs for sel in parse(e)[0]}
    # What the issue asks the dashboard to show.
    for metric in ("avl_positions_total", "avl_decode_errors_total", "avl_batch_seconds_bucket", "avl_writer_queue_rows",
                   "avl_spool_bytes", "avl_open_connections", *PLANNED):
        assert metric in used, metric


def test_alerts_use_only_exported_metrics() -> None:
    _check_exprs(alert_exprs())
