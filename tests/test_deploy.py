"""docs/deploy/: the Kubernetes manifests validate offline and no file carries a password."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from pipeline.secrets import has_password
from tests.conftest import REPO

DEPLOY = REPO / "docs" / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
K8S_VERSION = "1.30.0"


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return pod.get("containers", []) + pod.get("initContainers", [])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates(path: Path) -> None:
    for doc in _documents(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_expected_objects_are_there() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for p in MANIFESTS for d in _documents(p)}
    assert ("StatefulSet", "postgres") in kinds
    assert ("Deployment", "mlflow") in kinds
    jobs = {d["metadata"]["name"]: d for p in MANIFESTS for d in _documents(p)
            if d["kind"] == "Job"}
    assert "create-study-capacity" in jobs
    assert jobs["search-capacity"]["spec"]["parallelism"] > 1


def test_passwords_come_from_the_secret_only() -> None:
    for path in MANIFESTS:
        for doc in _documents(path):
            for container in _containers(doc):
                for word in container.get("command", []) + container.get("args", []):
                    assert not has_password(word), f"{path.name}: a password on a command line"
                for env in container.get("env", []):
                    if "PASSWORD" in env["name"]:
                        assert "value" not in env, f"{path.name}: {env['name']} given inline"
                        assert env["valueFrom"]["secretKeyRef"]["name"] == "pipeline-db"
                    if "value" in env:
                        assert not has_password(env["value"]), f"{path.name}: {env['name']}"


def test_systemd_unit_reads_secrets_from_a_file() -> None:
    unit = (DEPLOY / "pipeline-worker@.service").read_text()
    assert "EnvironmentFile=/etc/pipeline/worker.env" in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "--storage" not in exec_start and "PGPASSWORD" not in exec_start
