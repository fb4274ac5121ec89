"""deploy/: the Dockerfile, compose file, systemd unit and Kubernetes manifests hang together."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.cli import build_parser
from monitor.health import HealthServer
from monitor.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DRAIN = Settings().drain_seconds
HARDENING = ("ProtectSystem", "ProtectHome", "NoNewPrivileges", "PrivateTmp", "PrivateDevices",
             "ReadWritePaths", "CapabilityBoundingSet", "RestrictAddressFamilies",
             "SystemCallFilter", "MemoryMax", "StateDirectory")


def seconds(duration: str | int) -> float:
    """A compose/systemd duration ("45s", "1m30s", "45") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|m|s|)", str(duration))
    assert parts, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def load_all(path: Path) -> list[dict[str, Any]]:
    """Every YAML document in a file, failing on an empty one."""
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs, f"{path} has no documents"
    return docs


def k8s_object(kind: str, name: str | None = None) -> dict[str, Any]:
    """The one Kubernetes object of ``kind`` (and ``name``) across deploy/k8s/."""
    found = [d for p in sorted(K8S.glob("*.yaml")) for d in load_all(p)
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in joined.splitlines() if ln.strip()]


def final_stage() -> list[tuple[str, str]]:
    """Instructions after the last FROM: what the shipped image actually is."""
    steps = dockerfile()
    last = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last:]


def assert_cli_accepts(argv: list[str]) -> None:
    """The real `spillover` argument parser accepts this command line."""
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse reports errors by exiting
        pytest.fail(f"spillover rejects {argv}: exit {exc.code}")


def test_every_yaml_file_parses() -> None:
    """compose.yaml and every Kubernetes manifest are valid YAML with at least one document."""
    files = [DEPLOY / "compose.yaml", *sorted(K8S.glob("*.yaml"))]
    assert len(files) >= 5
    for path in files:
        for doc in load_all(path):
            assert isinstance(doc, dict), path
            if path.parent == K8S:
                assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
                assert "namespace" not in doc["metadata"], f"{path}: keep manifests namespace-free"


def test_compose_services() -> None:
    """Redis is durable and never evicts; two replicas wait for it and get time to drain."""
    compose = load_all(DEPLOY / "compose.yaml")[0]
    redis, app = compose["services"]["redis"], compose["services"]["spillover"]
    assert str(redis["image"]).startswith("redis:7")
    command = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])
    build = app["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert app["env_file"] in (".env", [".env"])
    assert "../config:/etc/spillover:ro" in app["volumes"]
    assert "../alerts:/etc/spillover/alerts:ro" in app["volumes"]
    assert (DEPLOY / "../config").is_dir() and (DEPLOY / "../alerts").is_dir()
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert app["deploy"]["replicas"] == 2
    assert seconds(app["stop_grace_period"]) > DRAIN
    assert "redis://redis:6379" in app["environment"]["SPILLOVER_STATE_URL"]
    assert_cli_accepts(app["command"])


def test_env_example_documents_every_setting() -> None:
    """Every SPILLOVER_* setting and every channel variable appears in deploy/env.example."""
    text = (DEPLOY / "env.example").read_text(encoding="utf-8")
    documented = set(re.findall(r"^#?\s*(SPILLOVER_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    expected = {f"SPILLOVER_{name.upper()}" for name in Settings.model_fields}
    expected |= {f"SPILLOVER_{v}" for v in ("SMTP_HOST", "SMTP_PORT", "SMTP_USER",
                                            "SMTP_PASSWORD", "SMTP_TLS", "EMAIL_FROM",
                                            "EMAIL_TO", "SLACK_WEBHOOK_URL")}
    assert not expected - documented, f"undocumented: {sorted(expected - documented)}"
    assert "hooks.slack.com/services/T" not in text  # examples never carry a real-looking webhook


def test_deployment_probes_grace_and_security() -> None:
    """The Deployment probes /healthz and /readyz, outlives the drain and runs locked down."""
    dep = k8s_object("Deployment", "spillover")
    pod = dep["spec"]["template"]["spec"]
    (box,) = pod["containers"]
    assert dep["spec"]["replicas"] == 2
    assert pod["terminationGracePeriodSeconds"] > DRAIN
    assert box["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert box["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert box["readinessProbe"]["initialDelaySeconds"] > 0
    port = box["readinessProbe"]["httpGet"]["port"]
    assert port in {p["name"] for p in box["ports"]} | {p["containerPort"] for p in box["ports"]}
    listen = {e["name"]: e.get("value") for e in box["env"]}["SPILLOVER_HEALTH_LISTEN"]
    assert int(listen.rsplit(":", 1)[1]) in {p["containerPort"] for p in box["ports"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert box["securityContext"]["readOnlyRootFilesystem"] is True
    assert box["securityContext"]["allowPrivilegeEscalation"] is False
    assert box["resources"]["limits"]["memory"] == "1Gi"
    assert box["resources"]["requests"]["memory"] == "1Gi"
    mounts = {m["mountPath"]: m["name"] for m in box["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert_cli_accepts(box["args"])


def test_deployment_references_exist() -> None:
    """The Secret and ConfigMaps the Deployment reads are the ones shipped beside it."""
    pod = k8s_object("Deployment", "spillover")["spec"]["template"]["spec"]
    (box,) = pod["containers"]
    (secret_ref,) = [s["secretRef"]["name"] for s in box["envFrom"]]
    secret = k8s_object("Secret", secret_ref)
    assert "SPILLOVER_SMTP_PASSWORD" in secret["stringData"]
    assert "SPILLOVER_SLACK_WEBHOOK_URL" in secret["stringData"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in box["volumeMounts"]}
    config_volume = volumes[mounts["/etc/spillover"]]
    for volume in volumes.values():
        if "configMap" in volume:
            assert k8s_object("ConfigMap", volume["configMap"]["name"])
    assert "configMap" in config_volume
    assert "watchlists" in volumes[mounts["/etc/spillover/watchlists"]]["configMap"]["name"]
    comment = (K8S / "configmap.yaml").read_text(encoding="utf-8")
    assert "kubectl create configmap" in comment and "--from-file" in comment


def test_redis_statefulset_is_durable() -> None:
    """Redis in Kubernetes keeps an AOF on a PVC, never evicts, and is reachable by its Service."""
    sts = k8s_object("StatefulSet", "spillover-redis")
    (box,) = sts["spec"]["template"]["spec"]["containers"]
    args = " ".join(box.get("args", []) + box.get("command", []))
    assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert claim in {m["name"] for m in box["volumeMounts"]}
    service = k8s_object("Service", sts["spec"]["serviceName"])
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    state_url = k8s_object("Secret", "spillover")["stringData"]["SPILLOVER_STATE_URL"]
    assert f"//{service['metadata']['name']}:" in state_url


def systemd_unit() -> configparser.ConfigParser:
    """The unit file read the way systemd reads it: repeated keys allowed, case kept."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / "spillover.service", encoding="utf-8")
    return unit


def test_systemd_unit_is_notify_and_hardened() -> None:
    """The unit waits for READY=1, outlives the drain, runs unprivileged and sandboxed."""
    service = systemd_unit()["Service"]
    assert service["Type"] == "notify"
    assert service["User"] not in ("", "root")
    assert service["Restart"] == "on-failure" and seconds(service["RestartSec"]) > 0
    assert seconds(service["TimeoutStopSec"]) > DRAIN
    for key in HARDENING:
        assert key in service, key
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert service["EnvironmentFile"] == "-/etc/spillover/spillover.env"
    exec_start = shlex.split(service["ExecStart"])
    assert exec_start[0] == "/opt/spillover/.venv/bin/spillover"
    assert_cli_accepts(exec_start[1:])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_finds_nothing_but_the_missing_binary() -> None:
    """systemd's own verifier accepts every directive (only the uninstalled binary is missing)."""
    result = subprocess.run(
        ["systemd-analyze", "verify", str(DEPLOY / "systemd" / "spillover.service")],
        capture_output=True, text=True, timeout=30, check=False,
    )
    complaints = [ln for ln in (result.stdout + result.stderr).splitlines()
                  if ln.strip() and "is not executable" not in ln]
    assert not complaints, complaints


def test_dockerfile_stages_user_and_healthcheck() -> None:
    """Multi-stage build, model prepared at build time, non-root runtime with a health check."""
    steps = dockerfile()
    assert sum(op == "FROM" for op, _ in steps) >= 2
    runs = [arg for op, arg in steps if op == "RUN"]
    assert any(arg.strip() == "spillover model prepare" for arg in runs)
    torch = next(arg for arg in runs if "torch==" in arg)
    assert "download.pytorch.org/whl/cpu" in torch
    pin = re.search(r'"torch(==[^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pin and f"torch{pin.group(1)}" in torch, "image torch must match the pyproject pin"
    final = final_stage()
    users = [arg.split(":")[0] for op, arg in final if op == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    env = " ".join(arg for op, arg in final if op == "ENV")
    assert "SPILLOVER_DATA_DIR=/var/lib/spillover" in env
    assert "SPILLOVER_HEALTH_LISTEN=0.0.0.0:9108" in env
    assert any(op == "HEALTHCHECK" for op, _ in final)
    entry = json.loads(next(arg for op, arg in final if op == "ENTRYPOINT"))
    cmd = json.loads(next(arg for op, arg in final if op == "CMD"))
    assert entry == ["spillover"] and cmd[:3] == ["run", "--config", "/etc/spillover"]
    assert_cli_accepts(cmd)
    assert_cli_accepts(["model", "prepare"])


def test_dockerfile_copies_files_that_exist() -> None:
    """Every COPY from the build context names a path present in the repository."""
    sources = [arg.split()[0] for op, arg in dockerfile()
               if op == "COPY" and not arg.startswith("--from")]
    for src in sources:
        if src == "README.md" and not (ROOT / src).exists():
            continue  # the lead writes README.md; `pip install .` needs it at build time
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"


def test_dockerfile_healthcheck_probes_healthz() -> None:
    """The HEALTHCHECK one-liner exits 0 against a live /healthz and non-zero once it is gone."""
    check = next(arg for op, arg in final_stage() if op == "HEALTHCHECK")
    argv = json.loads(check.split("CMD", 1)[1])
    assert argv[:2] == ["python", "-c"]
    server = HealthServer("127.0.0.1:0")
    server.start()
    env = {"SPILLOVER_HEALTH_LISTEN": f"0.0.0.0:{server.port}", "PATH": ""}
    try:
        alive = subprocess.run([sys.executable, "-c", argv[2]], env=env, timeout=30, check=False)
    finally:
        server.stop()
    dead = subprocess.run([sys.executable, "-c", argv[2]], env=env, capture_output=True,
                          timeout=30, check=False)
    assert alive.returncode == 0
    assert dead.returncode != 0


def readme_commands() -> set[str]:
    """`spillover ...` command lines quoted in README.md, in fenced blocks or inline code."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    fenced = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.DOTALL)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    found = set()
    for line in "\n".join([*fenced, *inline]).splitlines():
        match = re.search(r"(?:^|[\s$/])spillover\s+([a-z][a-z-]*(?:\s+[a-z][a-z-]*)?)", line)
        if match:
            found.add(match.group(1))
    return found


def test_image_commands_are_documented_in_readme() -> None:
    """The subcommands the image runs (model prepare, run) are ones README.md documents."""
    if not (ROOT / "README.md").exists():
        pytest.skip("README.md is not written yet (the lead owns it); nothing to compare against")
    documented = readme_commands()
    words = {c.split()[0] for c in documented}
    assert "model prepare" in documented, sorted(documented)
    assert "run" in words, sorted(documented)
