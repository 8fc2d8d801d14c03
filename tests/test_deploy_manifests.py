"""The Kubernetes manifests under deploy/kubernetes/ are valid and keep the relay's promises."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import orjson
import pytest
import yaml

from relay.config import FlusherSettings, Settings, load_settings
from relay.contract.intake import PIPELINE_PATH
from relay.testing.process import RELAY_VARIABLES, RelayProcess, write_config
from relay.testing.samples import request
from tests.fake_intake import FakeIntake
from tests.helpers import API_KEY, JSON, jobs, wait_until

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
# 1.33: native sidecars are generally available; 1.37: the newest schema the validator ships.
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]
RELAY_USER = 10001
TOKEN = "runners-ingest-token"  # noqa: S105


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


def _outbox_volume(doc: dict[str, Any], relay: dict[str, Any]) -> dict[str, Any]:
    """The volume that holds the relay's outbox file."""
    (outbox,) = [e["value"] for e in relay["env"] if e["name"] == "CI_RELAY_OUTBOX__PATH"]
    (mount,) = [m for m in relay["volumeMounts"] if Path(outbox).parent == Path(m["mountPath"])]
    volumes: list[dict[str, Any]] = _pod_spec(doc)["volumes"]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    return volume


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
    assert "emptyDir" in _outbox_volume(pod, relay)
    assert spec["terminationGracePeriodSeconds"] > FlusherSettings().shutdown_grace_s


def test_the_daemonset_keeps_its_outbox_on_the_node_and_the_service_stays_local() -> None:
    """The DaemonSet's outbox is a hostPath; its Service routes to the node's own relay."""
    (daemonset,) = _of_kind("DaemonSet")
    spec = _pod_spec(daemonset)
    (relay,) = _relay_containers(daemonset)
    assert "hostPath" in _outbox_volume(daemonset, relay)
    assert spec["terminationGracePeriodSeconds"] > FlusherSettings().shutdown_grace_s
    (service,) = _of_kind("Service")
    assert "Local" == service["spec"]["internalTrafficPolicy"]
    assert daemonset["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert {"/health", "/ready"} == {
        relay[probe]["httpGet"]["path"] for probe in ("livenessProbe", "readinessProbe")
    }


@pytest.mark.parametrize("kind", ["Pod", "DaemonSet"])
def test_the_relay_runs_as_its_numeric_user_read_only_without_capabilities(kind: str) -> None:
    """Every relay container is non-root by number, read-only, without privilege or capability."""
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


def _secret_file(doc: dict[str, Any], relay: dict[str, Any], path: str) -> tuple[str, str]:
    """The Secret and key whose file ``path`` is in ``relay``: it must lie in a whole (no
    subPath, which the kubelet never updates), read-only mount of a secret volume."""
    volumes = {volume["name"]: volume for volume in _pod_spec(doc)["volumes"]}
    (mount,) = [m for m in relay["volumeMounts"] if Path(path).parent == Path(m["mountPath"])]
    assert (True, None) == (mount.get("readOnly"), mount.get("subPath"))
    secret = volumes[mount["name"]]["secret"]
    (key,) = [item["key"] for item in secret["items"] if item["path"] == Path(path).name]
    return secret["secretName"], key


def _settings(relay: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The relay's settings from the container's environment alone, read as the relay reads
    them; every variable is a literal (none from a secretKeyRef)."""
    for name in os.environ:
        if name.startswith(RELAY_VARIABLES):
            monkeypatch.delenv(name)
    assert "envFrom" not in relay
    for variable in relay["env"]:
        assert "valueFrom" not in variable, variable["name"]
        monkeypatch.setenv(variable["name"], variable["value"])
    return load_settings()


@pytest.mark.parametrize("kind", ["Pod", "DaemonSet"])
def test_the_api_key_is_a_file_of_the_secret_never_a_variable(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each relay reads its API key from the Secret's file (so it follows the Secret's updates),
    and no variable holds a key."""
    for doc in _of_kind(kind):
        (relay,) = _relay_containers(doc)
        names = {variable["name"] for variable in relay["env"]}
        assert set() == names & {"DD_API_KEY", "CI_RELAY_UPSTREAM__API_KEY"}
        upstream = _settings(relay, monkeypatch).upstream
        assert (None, True) == (upstream.api_key, upstream.api_key_file is not None)
        assert ("ci-relay-datadog", "api-key") == _secret_file(
            doc, relay, str(upstream.api_key_file)
        )


@pytest.mark.parametrize(
    ("kind", "secret"), [("Pod", None), ("DaemonSet", ("ci-relay-ingest-token", "token"))]
)
def test_a_relay_beyond_loopback_reads_its_ingest_token_from_a_secret_file(
    kind: str, secret: tuple[str, str] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sidecar listens on the pod's loopback without a token; the DaemonSet listens beyond
    loopback and so requires the token of a Secret's file, while its probes stay open."""
    (doc,) = _of_kind(kind)
    (relay,) = _relay_containers(doc)
    server = _settings(relay, monkeypatch).server
    assert server.ingest_token is None
    token_file = server.ingest_token_file
    assert (secret is None, secret is None) == (server.loopback_only, token_file is None)
    if token_file is not None:
        assert secret == _secret_file(doc, relay, str(token_file))
    probes = [relay[p] for p in ("startupProbe", "livenessProbe", "readinessProbe")]
    assert [] == [probe for probe in probes if "httpHeaders" in probe.get("httpGet", {})]


async def test_the_daemonsets_environment_gives_a_relay_that_requires_its_token(
    tmp_path: Path,
) -> None:
    """The DaemonSet's environment, its Secrets' files in place, starts a relay that refuses a
    post without the token, takes one with it as DD-API-KEY, keeps /health open and /metrics
    shut, and delivers with the API key of its file."""
    (daemonset,) = _of_kind("DaemonSet")
    (relay,) = _relay_containers(daemonset)
    secrets = {"ci-relay-datadog": {"api-key": API_KEY}, "ci-relay-ingest-token": {"token": TOKEN}}
    env = {variable["name"]: variable["value"] for variable in relay["env"]}
    volumes = {volume["name"]: volume for volume in _pod_spec(daemonset)["volumes"]}
    for mount in relay["volumeMounts"]:
        if "secret" not in volumes[mount["name"]]:
            continue
        secret = volumes[mount["name"]]["secret"]
        where = tmp_path / mount["name"]
        where.mkdir()
        for item in secret["items"]:  # as the kubelet writes them, with a final newline
            value = secrets[secret["secretName"]][item["key"]]
            (where / item["path"]).write_text(value + "\n", encoding="utf-8")
        env = {name: value.replace(mount["mountPath"], str(where)) for name, value in env.items()}
    # Only loopback in the tests; the outbox in the test's directory.
    env |= {"CI_RELAY_SERVER__HOST": "127.0.0.1", "CI_RELAY_SERVER__PORT": "0"}
    env["CI_RELAY_OUTBOX__PATH"] = str(tmp_path / "outbox.db")
    body = orjson.dumps(request(*jobs(1, "node")))
    async with FakeIntake() as intake:
        config = write_config(
            tmp_path / "relay.toml",
            upstream={"url": intake.url},
            flusher={"flush_interval_s": 0.05},
        )
        async with RelayProcess(config, env) as process, aiohttp.ClientSession() as session:
            base = process.url.removesuffix(PIPELINE_PATH)
            answers = []
            for headers in ({}, {"DD-API-KEY": TOKEN}):
                async with session.post(process.url, data=body, headers=JSON | headers) as resp:
                    answers.append(resp.status)
            for path in ("/health", "/metrics"):
                async with session.get(base + path) as resp:
                    answers.append(resp.status)
            await wait_until(lambda: bool(intake.received), 20, "a delivery")
            assert 0 == await process.terminate()
    assert [403, 202, 200, 403] == answers
    assert API_KEY == intake.received[0].headers["DD-API-KEY"]
    assert 1 == len(intake.received)
