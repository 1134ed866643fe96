"""docker-compose.yml and the Prometheus files of its `monitoring` profile.

The compose file is validated against the Compose Specification's JSON schema as shipped in
the `check-jsonschema` package (dev extras): it vendors the official compose-spec.json,
refreshed from the compose-spec repository with each release, so nothing is copied in here.
promtool is not available, so the Prometheus files are checked structurally and every alert
expression is parsed with `promql-parser` (Python bindings of a Rust PromQL parser), and
the metrics and label values it selects are checked against the ones Switchboard exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.cli.main import main as switchboard
from app.ops.metrics import Metrics
from app.rules import load_rules
from app.settings import Settings
from tests.ship.support import (
    REPO,
    final_stage,
    load_compose,
    map_container_path,
    service_environment,
    service_mounts,
)

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"

# Referenced by alerts.yml ahead of the code that exports them (rules hot reload is being
# built alongside). Allowed only while absent: once exported, their labels are checked too.
PENDING_METRICS: set[str] = set()


def compose_schema() -> dict[str, Any]:
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    return schema


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def test_compose_file_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    schema = compose_schema()
    assert "compose" in schema.get("$id", "") + schema.get("title", "").lower()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(
        validator_class(schema).iter_errors(compose), key=lambda e: list(e.absolute_path)
    )
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_the_schema_check_catches_mistakes(compose: dict[str, Any]) -> None:
    schema = compose_schema()
    broken = json.loads(json.dumps(compose))
    broken["services"]["switchboard"]["restart"] = {"policy": "always"}
    broken["services"]["switchboard"]["healtcheck"] = {}
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert len(list(validator.iter_errors(broken))) >= 2


def test_every_bind_mounted_host_path_exists(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for mount in service_mounts(service):
            if mount.bind:
                assert mount.host_path().exists(), f"{name}: {mount.source} does not exist"
                assert REPO in mount.host_path().parents or mount.host_path() == REPO
            else:
                assert mount.source in named, f"{name}: volume {mount.source} is not declared"


def test_router_service(compose: dict[str, Any]) -> None:
    service = compose["services"]["switchboard"]
    build = service["build"]
    context = REPO / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (context / dockerfile).resolve() == (REPO / "Dockerfile")
    assert service["restart"] in ("always", "unless-stopped", "on-failure")
    assert "profiles" not in service, "the router runs without any profile"

    # Settings: .env, which is a copy of .env.example (scripts/serve makes one).
    assert service["env_file"] in (".env", [".env"])
    assert (REPO / ".env.example").exists()
    env = service_environment(service)
    documented = set(re.findall(r"^#? ?([A-Z_]+)=", (REPO / ".env.example").read_text(), re.M))
    assert set(env) <= documented, "compose sets a setting that .env.example does not document"
    # Pinned in compose: a .env written for a local run must not move the container.
    image_env = final_stage().env()
    for name in (
        "SWITCHBOARD_HOST",
        "SWITCHBOARD_PORT",
        "SWITCHBOARD_ROUTES_FILE",
        "SWITCHBOARD_CALLS_DB",
    ):
        assert env[name] == image_env[name], name

    port = env["SWITCHBOARD_PORT"]
    published = [str(p) for p in service["ports"]]
    assert any(p.endswith(f":{port}") for p in published)
    healthcheck = " ".join(service["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/healthz" in healthcheck and "urllib.request" in healthcheck
    grace = service.get("stop_grace_period", "10s")
    assert int(grace.rstrip("s")) > 10, "leave uvicorn its 10 s of graceful shutdown"


def test_routes_and_lists_are_mounted_read_only(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = compose["services"]["switchboard"]
    mounts = service_mounts(service)
    routes_in_container = service_environment(service)["SWITCHBOARD_ROUTES_FILE"]
    routes = map_container_path(routes_in_container, mounts)
    assert routes == REPO / "routes.yaml"
    lists_dir = PurePosixPath(routes_in_container).parent / "lists"
    assert map_container_path(str(lists_dir), mounts) == REPO / "lists"
    for mount in mounts:
        if mount.bind:
            assert mount.read_only, f"{mount.target} should be mounted read-only"
    # What the container would load is a valid routes file, and every file it is built
    # from (number lists...) is inside the mounts, so the container can read it too.
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("SWITCHBOARD_")]:
        monkeypatch.delenv(key)
    assert switchboard(["check", str(routes)]) == 0
    mounted = [m.host_path() for m in mounts if m.bind]
    for used in load_rules(routes, region="US").files:
        path = Path(used).resolve()
        assert any(path == m or m in path.parents for m in mounted), f"{used} is not mounted"


def test_the_call_database_is_on_a_writable_named_volume(compose: dict[str, Any]) -> None:
    """The root filesystem is read-only: the call log needs a volume of its own, named so
    that it outlives the container, and the only writable mount."""
    service = compose["services"]["switchboard"]
    assert service["read_only"] is True
    database = PurePosixPath(service_environment(service)["SWITCHBOARD_CALLS_DB"])
    writable = [m for m in service_mounts(service) if not m.read_only]
    assert len(writable) == 1, writable
    (volume,) = writable
    assert not volume.bind and volume.source in compose["volumes"]
    assert PurePosixPath(volume.target) == database.parent  # with its -wal and -shm files
    tmpfs = service.get("tmpfs", [])
    assert not any(database.is_relative_to(t) for t in tmpfs), "on tmpfs it would not last"
    # The image makes that directory for its user, so the fresh volume is writable by it.
    image = final_stage()
    assert any(f"-o 10001 -g 10001 -m 0750 {database.parent}" in r.args for r in image.all("RUN"))
    assert any(str(database.parent) in v.args for v in image.all("VOLUME"))
    user = image.last("USER")
    assert user is not None and user.args == "10001:10001"


def test_monitoring_profile_runs_prometheus_on_the_repo_config(compose: dict[str, Any]) -> None:
    services = {
        name: s for name, s in compose["services"].items() if "monitoring" in s.get("profiles", [])
    }
    assert set(services) == {"prometheus"}
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:v")
    assert not prometheus["image"].endswith(":latest")
    flags = dict(arg.lstrip("-").split("=", 1) for arg in prometheus["command"])
    config = map_container_path(flags["config.file"], service_mounts(prometheus))
    assert config == PROMETHEUS_DIR / "prometheus.yml"
    assert flags["storage.tsdb.path"] in {m.target for m in service_mounts(prometheus)}


# --- High availability: the `ha` profile ------------------------------------------------

HA_SERVICES = {"switchboard-a", "switchboard-b", "proxy", "redis", "postgres"}
HAPROXY_CONFIG = REPO / "deploy" / "haproxy" / "haproxy.cfg"


def ha(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if "ha" in s.get("profiles", [])}


def replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in ha(compose).items() if n.startswith("switchboard-")}


def test_ha_profile_services(compose: dict[str, Any]) -> None:
    assert set(ha(compose)) == HA_SERVICES
    for name, service in ha(compose).items():
        assert service["profiles"] == ["ha"], name
        assert service["restart"] == "unless-stopped", name
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        image = service["image"]
        assert (":" in image and not image.endswith(":latest")) or image == "switchboard:latest"


def test_ha_replicas_run_the_router_on_the_shared_state(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    single = compose["services"]["switchboard"]
    found = replicas(compose)
    assert len(found) >= 2
    ids = set()
    documented = set(re.findall(r"^#? ?([A-Z_]+)=", (REPO / ".env.example").read_text(), re.M))
    for name, service in found.items():
        # The same image, settings file, rules and hardening as the single node.
        for key in ("image", "build", "env_file", "read_only", "cap_drop", "security_opt"):
            assert service[key] == single[key], f"{name}: {key}"
        assert "ports" not in service, f"{name}: only the proxy is published"
        mounts = service_mounts(service)
        assert [m for m in mounts if m.bind] == [m for m in service_mounts(single) if m.bind]
        assert all(m.read_only for m in mounts), f"{name}: nothing durable in a replica"
        env = service_environment(service)
        assert set(env) <= documented, f"{name}: a setting .env.example does not document"
        for key in ("SWITCHBOARD_HOST", "SWITCHBOARD_PORT", "SWITCHBOARD_ROUTES_FILE"):
            assert env[key] == service_environment(single)[key], f"{name}: {key}"
        # Redis and PostgreSQL are the compose services, started healthy first.
        assert env["SWITCHBOARD_REDIS_URL"].startswith("redis://redis:6379/")
        database = env["SWITCHBOARD_DATABASE_URL"]
        postgres_env = service_environment(compose["services"]["postgres"])
        assert database.startswith(f"postgresql://{postgres_env['POSTGRES_USER']}:")
        assert database.endswith(f"@postgres:5432/{postgres_env['POSTGRES_DB']}")
        assert postgres_env["POSTGRES_PASSWORD"] in database  # the same ${...} variable
        assert service["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
        }
        ids.add(env["SWITCHBOARD_REPLICA_ID"])
        # What the replica would load is a valid configuration.
        for key in [k for k in os.environ if k.startswith(("SWITCHBOARD_", "OPENAI_"))]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value.replace("${POSTGRES_PASSWORD:-switchboard}", "pw"))
        settings = Settings(_env_file=REPO / ".env.example")
        assert settings.redis_url is not None and settings.database_url is not None
    assert len(ids) == len(found), "every replica needs its own id"


def haproxy_lines() -> list[list[str]]:
    lines = []
    for raw in HAPROXY_CONFIG.read_text().splitlines():
        text = raw.split("#", 1)[0].strip()
        if text:
            lines.append(text.split())
    return lines


def test_ha_proxy_sends_traffic_to_every_ready_replica(compose: dict[str, Any]) -> None:
    proxy = compose["services"]["proxy"]
    assert proxy["image"].startswith("haproxy:")
    config_dir = map_container_path("/usr/local/etc/haproxy", service_mounts(proxy))
    assert config_dir == HAPROXY_CONFIG.parent
    # Published where the single node is: the TLS proxy in front stays as it is.
    assert proxy["ports"] == compose["services"]["switchboard"]["ports"]
    lines = haproxy_lines()
    port = service_environment(compose["services"]["switchboard"])["SWITCHBOARD_PORT"]
    assert ["bind", f":{port}"] in lines
    servers = {line[2] for line in lines if line[0] == "server"}
    expected = {
        f"{name}:{service_environment(s)['SWITCHBOARD_PORT']}"
        for name, s in replicas(compose).items()
    }
    assert servers == expected, "every replica behind the proxy, and nothing else"
    assert set(proxy["depends_on"]) == set(replicas(compose))
    # Only ready replicas get traffic, and a failed attempt is retried on another one.
    assert ["option", "httpchk", "GET", "/readyz"] in lines
    assert ["http-check", "expect", "status", "200"] in lines
    assert any(line[0] == "default-server" and "check" in line for line in lines)
    retry_on = next(line for line in lines if line[0] == "retry-on")
    assert {"conn-failure", "empty-response"} <= set(retry_on[1:])
    assert ["option", "redispatch", "1"] in lines
    monitor = next(line for line in lines if line[0] == "monitor-uri")[1]
    assert monitor in " ".join(proxy["healthcheck"]["test"])


def test_ha_proxy_config_is_valid_haproxy() -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy) to check its config")
    result = subprocess.run(
        [haproxy, "-c", "-f", str(HAPROXY_CONFIG)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ha_state_services_keep_their_data_on_named_volumes(compose: dict[str, Any]) -> None:
    for name, target in (("redis", "/data"), ("postgres", "/var/lib/postgresql/data")):
        service = compose["services"][name]
        (mount,) = service_mounts(service)
        assert not mount.bind and mount.source in compose["volumes"] and mount.target == target
        assert "ports" not in service, f"{name} is for the replicas only"
    assert "--appendonly" in compose["services"]["redis"]["command"]


# --- Prometheus ------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


def duration(text: str) -> float:
    return promql_parser.parse_duration(text).total_seconds()


def test_prometheus_config(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    known = {
        "global",
        "rule_files",
        "scrape_configs",
        "scrape_config_files",
        "alerting",
        "remote_write",
        "remote_read",
        "storage",
        "tracing",
        "otlp",
        "runtime",
    }
    assert set(config) <= known, set(config) - known
    for key in ("scrape_interval", "evaluation_interval"):
        assert duration(config["global"][key]) > 0
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file(), rule_file
    jobs = config["scrape_configs"]
    assert len({job["job_name"] for job in jobs}) == len(jobs)
    (job,) = [job for job in jobs if job["job_name"] == "switchboard"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    router = compose["services"]["switchboard"]
    port = service_environment(router)["SWITCHBOARD_PORT"]
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"switchboard:{port}"], "scrape the compose service on its port"


def exported_metrics() -> dict[str, dict[str, set[str]]]:
    """Sample name -> label -> values, as a fresh app exports them (labels pre-created)."""
    payload, _ = Metrics().render()
    found: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(payload.decode()):
        for sample in family.samples:
            labels = found.setdefault(sample.name, {})
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    return found


def documented_metrics() -> set[str]:
    text = (REPO / "docs" / "operations.md").read_text()
    return set(re.findall(r"`(switchboard_[a-z0-9_]+)`", text))


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def alert_rules() -> list[dict[str, Any]]:
    rules = load_yaml(PROMETHEUS_DIR / "alerts.yml")
    assert set(rules) == {"groups"}
    out: list[dict[str, Any]] = []
    for group in rules["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "labels"}
        out += group["rules"]
    return out


def test_alert_rules_parse() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(set(names)) == len(names), "alert names repeat"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        if "for" in rule:
            assert duration(rule["for"]) > 0
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]
        for text in rule["annotations"].values():
            assert text.count("{{") == text.count("}}"), f"{rule['alert']}: template braces"


def test_alerts_use_only_metrics_and_labels_that_exist() -> None:
    exported = exported_metrics()
    known = set(exported) | documented_metrics() | {"up"}
    for rule in alert_rules():
        for selector in selectors(rule["expr"]):
            name = selector.name or ""
            if name not in known and name in PENDING_METRICS:
                continue  # not exported yet; checked like the others once it is
            assert name in known, f"{rule['alert']}: no metric {name} (docs/operations.md)"
            if name not in exported:
                continue  # documented only (e.g. `up`, or a metric of another build)
            for matcher in selector.matchers.matchers:
                values = exported[name].get(matcher.name)
                assert values is not None, f"{rule['alert']}: {name} has no {matcher.name}"
                if matcher.op == promql_parser.MatchOp.Equal:
                    wanted = [matcher.value]
                elif matcher.op == promql_parser.MatchOp.Re and re.fullmatch(
                    r"[\w|]+", matcher.value
                ):
                    wanted = matcher.value.split("|")
                else:
                    continue
                for value in wanted:
                    assert value in values, f"{rule['alert']}: {name}{{{matcher.name}={value}}}"


def test_alerts_cover_what_operations_needs() -> None:
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        for selector in selectors(rule["expr"]):
            for matcher in selector.matchers.matchers:
                for value in matcher.value.split("|"):
                    used.setdefault(f"{selector.name}{{{matcher.name}}}", set()).add(value)
            used.setdefault(selector.name or "", set())
    # Webhook failures; upstream trouble; reload failures; no calls; dry-run.
    assert {"unauthorized", "malformed"} <= used["switchboard_webhooks_total{result}"]
    assert "retry" in used["switchboard_webhooks_total{result}"]
    assert {"5xx", "timeout", "connection_error"} <= used[
        "switchboard_upstream_requests_total{status}"
    ]
    assert {"switchboard_rules_last_reload_ok", "switchboard_rules_reloads_total"} & set(used)
    assert "switchboard_decisions_total" in used
    assert "switchboard_dry_run" in used
