"""The Kubernetes manifests under deploy/kubernetes/ are valid and keep the relay's promises."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from relay.config import FlusherSettings

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
# 1.33: native sidecars are generally available; 1.37: the newest schema the validator ships.
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]
RELAY_USER = 10001


def _documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as file:
        return [doc for doc in yaml.safe_load_all(file) if doc is not None]


def _all_documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in _documents(path)]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _all_documents() if doc["kind"] == kind]


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]
    return spec if doc["kind"] == "Pod" else spec["template"]["spec"]


def _relay_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(doc)
    every = spec.get("initContainers", []) + spec["containers"]
    return [c for c in every if c["name"] == "ci-relay"]


def test_there_are_a_sidecar_and_a_daemonset() -> None:
    """deploy/kubernetes/ holds the runner pod with its sidecar and the per-node DaemonSet."""
    assert ["daemonset.yaml", "sidecar.yaml"] == [path.name for path in MANIFESTS]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_every_manifest_is_valid_against_the_kubernetes_schema(path: Path, version: str) -> None:
    """Each document validates, strictly (no unknown field), against Kubernetes' own schema."""
    for doc in _documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_refuses_an_unknown_field() -> None:
    """A misspelt field fails validation, so the check above can fail."""
    (pod,) = _of_kind("Pod")
    broken = copy.deepcopy(pod)
    broken["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_sidecar_is_a_native_sidecar_with_room_for_its_final_flush() -> None:
    """The relay is an init container that restarts Always, on a volume of the pod, and the pod's
    termination grace covers the relay's shutdown budget."""
    (pod,) = _of_kind("Pod")
    spec = pod["spec"]
    (relay,) = [c for c in spec["initContainers"] if c["name"] == "ci-relay"]
    assert "Always" == relay["restartPolicy"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    (mount,) = relay["volumeMounts"]
    assert "emptyDir" in volumes[mount["name"]]
    assert spec["terminationGracePeriodSeconds"] > FlusherSettings().shutdown_grace_s


def test_the_daemonset_keeps_its_outbox_on_the_node_and_the_service_stays_local() -> None:
    """The DaemonSet's outbox is a hostPath; its Service routes to the node's own relay."""
    (daemonset,) = _of_kind("DaemonSet")
    spec = _pod_spec(daemonset)
    (relay,) = _relay_containers(daemonset)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    (mount,) = relay["volumeMounts"]
    assert "hostPath" in volumes[mount["name"]]
    assert spec["terminationGracePeriodSeconds"] > FlusherSettings().shutdown_grace_s
    (service,) = _of_kind("Service")
    assert "Local" == service["spec"]["internalTrafficPolicy"]
    assert daemonset["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert {"/health", "/ready"} == {
        relay[probe]["httpGet"]["path"] for probe in ("livenessProbe", "readinessProbe")
    }


@pytest.mark.parametrize("kind", ["Pod", "DaemonSet"])
def test_the_relay_runs_as_its_numeric_user_read_only_without_capabilities(kind: str) -> None:
    """Every relay container is non-root by number, read-only, without privilege or capability,
    and gets its API key from a Secret, never from a literal."""
    for doc in _of_kind(kind):
        (relay,) = _relay_containers(doc)
        context = relay["securityContext"]
        assert (True, RELAY_USER, True, False, ["ALL"]) == (
            context["runAsNonRoot"],
            context["runAsUser"],
            context["readOnlyRootFilesystem"],
            context["allowPrivilegeEscalation"],
            context["capabilities"]["drop"],
        )
        assert "add" not in context["capabilities"]
        (key,) = [e for e in relay["env"] if e["name"] == "CI_RELAY_UPSTREAM__API_KEY"]
        assert "value" not in key
        assert "api-key" == key["valueFrom"]["secretKeyRef"]["key"]
