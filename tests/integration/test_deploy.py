"""The deployment files stay valid and safe, checked offline (no cluster, no Docker, no network).

- Render every kustomization of deploy/k8s with kustomize: a `kustomize` binary, else
  `kubectl kustomize` (ROOMCAST_KUSTOMIZE=/path/to/kustomize-or-kubectl picks one). `./dev setup`
  installs Debian's kubernetes-client when neither is there; its kubectl embeds kustomize v2.0.3,
  which is why the kustomizations use `bases` and `patchesStrategicMerge`.
- Validate every rendered object: core kinds against the Kubernetes JSON schemas bundled by the
  `kubernetes-validate` package, strictly (an unknown field fails), for the oldest supported and
  the newest known Kubernetes version; Prometheus-operator kinds against
  tests/integration/schemas/monitoring.coreos.com_v1.json.
- Check what a reviewer would check by hand: resources, non-root and read-only pods, probes on the
  right paths and ports, the drain fits the grace period, the config covers every setting of
  roomcast.settings.SPECS, pinned images, selectors that select, the Dockerfile's final stage.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from roomcast.settings import SPECS, Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
TARGETS = {
    "base": BASE,
    "example": K8S / "overlays" / "example",
    "redis-cluster": K8S / "overlays" / "redis-cluster",
    "podmonitors": K8S / "podmonitors",
    "loadtest": K8S / "loadtest",
}
APP_TARGETS = ("base", "example", "redis-cluster")  # the ones that deploy roomcast itself
MONITORING_API = "monitoring.coreos.com/v1"
CRD_SCHEMAS = Path(__file__).with_name("schemas") / "monitoring.coreos.com_v1.json"
# Kubernetes versions to validate against: the oldest we support (topologySpreadConstraints'
# matchLabelKeys is on by default from 1.27) and the newest the installed schemas know.
K8S_VERSIONS = ("1.28.0", kubernetes_validate.utils.latest_version())

# Settings that are credentials or keys: in the Secret, never in the ConfigMap.
SECRET_VARS = {spec.env for spec in SPECS if re.search(r"(SECRET|_KEYS?|PASSWORD|_URL)$", spec.env)
               and spec.env != "AUTH_JWT_JWKS_URL"}  # the identity provider's public key set: no credential
PER_POD_VARS = {"NODE_ID"}  # from the pod name (downward API), not from the ConfigMap
# ConfigMap values that differ from the Settings defaults on purpose (everything else must match,
# so a default changed in settings.py is not silently pinned to its old value here).
DELIBERATE = {
    "GATEWAY_HOST": "listen on the pod IP, not loopback",
    "COORDINATOR_HOST": "the coordinator's probes and /metrics on the pod IP, not loopback",
    "DRAIN_WINDOW": "graceful drain on rolling updates",
    "AUTO_MIGRATE": "the migration Job applies the schema",
    "TRUSTED_PROXIES": "client addresses from X-Forwarded-For behind the Ingress",
}
CLIENT_SIDE_APPLY_LIMIT = 262_144  # kubectl apply stores the object in an annotation of at most 256 KiB


# ---------------------------------------------------------------- rendering


def _kustomize_command() -> list[str]:
    wanted = os.environ.get("ROOMCAST_KUSTOMIZE")
    for name in [wanted] if wanted else ["kustomize", "kubectl"]:
        path = shutil.which(name)
        if path:
            return [path, "build"] if "kustomize" in Path(path).name else [path, "kustomize"]
    pytest.fail(
        "no kustomize: install the Debian package kubernetes-client (./dev setup does), or a kustomize "
        "binary, or point ROOMCAST_KUSTOMIZE at one"
        + (f" (ROOMCAST_KUSTOMIZE={wanted!r} not found)" if wanted else "")
    )


@functools.cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    """The objects `kustomize build` makes of TARGETS[target]."""
    cmd = [*_kustomize_command(), str(TARGETS[target])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(proc.stdout) if d)
    assert docs, f"{' '.join(cmd)} rendered nothing"
    return docs


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def ident(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def find_prefix(docs: tuple[dict[str, Any], ...], kind: str, prefix: str) -> dict[str, Any]:
    """An object whose name may carry kustomize's hash suffix (generated ConfigMaps)."""
    found = [d for d in docs if d["kind"] == kind and re.fullmatch(rf"{prefix}(-[a-z0-9]{{10}})?", d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind}/{prefix}[-hash], found {len(found)}"
    return found[0]


def workloads(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, pod spec) of every Deployment, StatefulSet, DaemonSet and Job."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def containers(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, pod spec) of every container and init container."""
    for doc, pod in workloads(docs):
        for c in pod.get("initContainers", []) + pod["containers"]:
            yield f"{ident(doc)} container {c['name']}", c, pod


def config_data(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    return dict(find(docs, "ConfigMap", "roomcast-config")["data"])


def example_secret() -> dict[str, Any]:
    (secret,) = load_yaml(BASE / "secret.example.yaml")
    return secret


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are checked here: {selector}"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items()) and bool(selector["matchLabels"])


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    return dict(doc["spec"]["template"]["metadata"]["labels"])


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number or a container port name) as a number."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"container {container['name']} has no port named {port!r}"
    return int(named[0])


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert match, f"unsupported duration {duration!r}"
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


# ---------------------------------------------------------------- (a) kustomize renders


@pytest.mark.parametrize("target", TARGETS)
def test_kustomization_renders_unique_named_objects(target: str) -> None:
    docs = render(target)
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), f"incomplete object {doc}"
    names = [(d["apiVersion"].split("/")[0], ident(d)) for d in docs]
    assert len(names) == len(set(names)), f"duplicate objects in {target}: {names}"


@pytest.mark.parametrize("target", APP_TARGETS)
def test_app_has_every_part(target: str) -> None:
    have = {ident(d) for d in render(target)}
    wanted = {
        "ServiceAccount/roomcast", "ConfigMap/roomcast-config", "ConfigMap/roomcast-grafana-dashboard",
        "Deployment/roomcast-gateway", "Service/roomcast-gateway", "Ingress/roomcast",
        "HorizontalPodAutoscaler/roomcast-gateway", "PodDisruptionBudget/roomcast-gateway",
        "Deployment/roomcast-coordinator", "Service/roomcast-coordinator", "PodDisruptionBudget/roomcast-coordinator",
        "Job/roomcast-migrate", "ServiceMonitor/roomcast-gateway", "ServiceMonitor/roomcast-coordinator",
        "PrometheusRule/roomcast",
    }
    assert wanted <= have, f"{target} lacks {sorted(wanted - have)}"
    # The Secret holds credentials: never rendered (so never overwritten by a placeholder).
    assert not any(d["kind"] == "Secret" for d in render(target)), "a Secret is rendered; keep it out of kustomize"


def test_example_overlay_sets_namespace_everywhere() -> None:
    docs = render("example")
    find(docs, "Namespace", "roomcast")
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "roomcast", f"{ident(doc)} is not in namespace roomcast"


# ---------------------------------------------------------------- (b) schemas


def _core_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for target in TARGETS:
        for doc in render(target):
            if doc["apiVersion"] != MONITORING_API:
                yield f"{target}:{ident(doc)}", doc
    yield "base/secret.example.yaml", example_secret()


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_match_kubernetes_schema(version: str) -> None:
    errors = []
    for where, doc in _core_objects():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
    assert not errors, f"invalid for Kubernetes {version}:\n" + "\n".join(errors)


def test_monitoring_objects_match_crd_schema() -> None:
    schemas = json.loads(CRD_SCHEMAS.read_text(encoding="utf-8"))
    seen, errors = set(), []
    for target in TARGETS:
        for doc in render(target):
            if doc["apiVersion"] != MONITORING_API:
                continue
            seen.add(doc["kind"])
            assert doc["kind"] in schemas["$defs"], f"no schema for {doc['kind']} in {CRD_SCHEMAS.name}"
            validator = jsonschema.Draft202012Validator({"$defs": schemas["$defs"], "$ref": f"#/$defs/{doc['kind']}"})
            for err in validator.iter_errors(doc):
                errors.append(f"{target}:{ident(doc)}: {'.'.join(map(str, err.path))}: {err.message}")
    assert not errors, "\n".join(errors)
    assert seen == {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_crd_schema_rejects_a_typo() -> None:
    """The CRD schema is strict enough to catch a misspelt field (it would be pruned silently)."""
    schemas = json.loads(CRD_SCHEMAS.read_text(encoding="utf-8"))
    monitor = json.loads(json.dumps(find(render("base"), "ServiceMonitor", "roomcast-gateway")))
    monitor["spec"]["endpoints"][0]["scrape_interval"] = "15s"
    validator = jsonschema.Draft202012Validator({"$defs": schemas["$defs"], "$ref": "#/$defs/ServiceMonitor"})
    assert not validator.is_valid(monitor)


@pytest.mark.parametrize("target", TARGETS)
def test_objects_fit_client_side_apply(target: str) -> None:
    for doc in render(target):
        size = len(json.dumps(doc))
        assert size < CLIENT_SIDE_APPLY_LIMIT, f"{ident(doc)} is {size} bytes: too big for kubectl apply (use --server-side)"


# ---------------------------------------------------------------- (c) policy: pods


@pytest.mark.parametrize("target", [t for t in TARGETS if t != "podmonitors"])
def test_every_container_has_requests_and_limits(target: str) -> None:
    for where, c, _pod in containers(render(target)):
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for what in ("cpu", "memory"):
                assert what in res.get(kind, {}), f"{target}: {where} has no {kind}.{what}"


@pytest.mark.parametrize("target", [t for t in TARGETS if t != "podmonitors"])
def test_pods_run_locked_down(target: str) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities, the runtime's
    seccomp profile, no service account token: the "restricted" Pod Security Standard and more."""
    for where, c, pod in containers(render(target)):
        psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
        assert csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot"
        assert csc.get("runAsUser", psc.get("runAsUser", 10001)) != 0, f"{where}: runs as uid 0"
        assert csc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
        assert csc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
        assert not csc.get("privileged"), f"{where}: privileged"
        assert csc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities.drop [ALL]"
        assert not csc.get("capabilities", {}).get("add"), f"{where}: adds capabilities"
        seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", f"{where}: seccompProfile RuntimeDefault"
        assert pod.get("automountServiceAccountToken") is False, f"{where}: mounts a service account token"
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(flag), f"{where}: {flag}"
        assert not any("hostPath" in v for v in pod.get("volumes", [])), f"{where}: hostPath volume"
        # A read-only root needs somewhere writable for Python's tempfile: an emptyDir on /tmp.
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        assert tmp and tmp[0]["name"] in empty_dirs, f"{where}: no emptyDir on /tmp"


@pytest.mark.parametrize("target", [t for t in TARGETS if t != "podmonitors"])
def test_images_are_pinned(target: str) -> None:
    for where, c, _pod in containers(render(target)):
        image = c["image"]
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{where}: image {image!r} has no tag"
        assert tag != "latest", f"{where}: image {image!r} is :latest"
        assert c.get("imagePullPolicy") != "Always", f"{where}: a pinned tag needs no imagePullPolicy Always"


def test_example_overlay_uses_a_registry_image() -> None:
    for where, c, _pod in containers(render("example")):
        assert c["image"].startswith("registry.example.com/roomcast:"), f"{where}: image {c['image']!r} not set by the overlay"


@pytest.mark.parametrize("target", APP_TARGETS)
def test_gateway_probes(target: str) -> None:
    docs = render(target)
    config = config_data(docs)
    deploy = find(docs, "Deployment", "roomcast-gateway")
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["gateway"]
    port = int(config["GATEWAY_PORT"])
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
        http = c[probe]["httpGet"]
        assert http["path"] == path, f"{target}: gateway {probe} on {http['path']}"
        assert container_port(c, http["port"]) == port, f"{target}: gateway {probe} not on GATEWAY_PORT {port}"
    # Readiness must notice a drain quickly; liveness must not kill a busy replica too eagerly.
    ready, live = c["readinessProbe"], c["livenessProbe"]
    assert ready.get("periodSeconds", 10) * ready.get("failureThreshold", 3) <= 15
    assert live.get("periodSeconds", 10) * live.get("failureThreshold", 3) >= 20


@pytest.mark.parametrize("target", APP_TARGETS)
def test_coordinator_probes(target: str) -> None:
    docs = render(target)
    port = int(config_data(docs)["COORDINATOR_PORT"])
    deploy = find(docs, "Deployment", "roomcast-coordinator")
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["coordinator", "run"]
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http = c[probe]["httpGet"]
        assert http["path"] == path and container_port(c, http["port"]) == port, f"{target}: coordinator {probe}"
    assert deploy["spec"]["replicas"] == 2, "two coordinators: a leader and a standby"


@pytest.mark.parametrize("target", APP_TARGETS)
def test_gateway_drain_fits_the_grace_period(target: str) -> None:
    """preStop sleep (load balancers stop routing) + DRAIN_WINDOW (sockets closed with 1012, spread)
    + a margin for the last closes and the exit must end before the kubelet's SIGKILL."""
    docs = render(target)
    drain_ms = int(config_data(docs)["DRAIN_WINDOW"])
    assert drain_ms > 0, "DRAIN_WINDOW=0 closes every socket at once on each rolling update"
    pod = find(docs, "Deployment", "roomcast-gateway")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, f"preStop should be a plain sleep, is {command}"
    pre_stop = float(command[1])
    assert 2 <= pre_stop <= 15
    grace = pod["terminationGracePeriodSeconds"]
    margin = 5
    assert grace >= drain_ms / 1000 + pre_stop + margin, (
        f"{target}: terminationGracePeriodSeconds {grace} < preStop {pre_stop} s + DRAIN_WINDOW {drain_ms / 1000} s + {margin} s"
    )


@pytest.mark.parametrize("target", APP_TARGETS)
def test_gateway_spreads_and_scales(target: str) -> None:
    docs = render(target)
    deploy = find(docs, "Deployment", "roomcast-gateway")
    labels = pod_labels(deploy)
    keys = {t["topologyKey"] for t in deploy["spec"]["template"]["spec"]["topologySpreadConstraints"]
            if selects(t["labelSelector"], labels)}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # The HPA owns the replica count: a `replicas` field would reset it on every kubectl apply.
    assert "replicas" not in deploy["spec"]
    hpa = find(docs, "HorizontalPodAutoscaler", "roomcast-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "roomcast-gateway"}
    assert hpa["spec"]["minReplicas"] >= 3 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    for name in ("roomcast-gateway", "roomcast-coordinator"):
        pdb = find(docs, "PodDisruptionBudget", name)
        assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") is not None
        assert selects(pdb["spec"]["selector"], pod_labels(find(docs, "Deployment", name)))


# ---------------------------------------------------------------- (c) policy: configuration


@pytest.mark.parametrize("target", APP_TARGETS)
def test_config_and_secret_cover_every_setting(target: str) -> None:
    config = config_data(render(target))
    secret = set(example_secret()["stringData"])
    envs = {spec.env for spec in SPECS}
    assert not (set(config) & SECRET_VARS), f"credentials in the ConfigMap: {sorted(set(config) & SECRET_VARS)}"
    assert secret == SECRET_VARS, (
        f"secret.example.yaml should hold exactly the credential settings {sorted(SECRET_VARS)}; "
        f"missing {sorted(SECRET_VARS - secret)}, extra {sorted(secret - SECRET_VARS)}"
    )
    missing = envs - set(config) - secret - PER_POD_VARS
    unknown = set(config) - envs
    assert not missing, f"settings in roomcast.settings.SPECS but not in the ConfigMap: {sorted(missing)}"
    assert not unknown, f"ConfigMap keys that are no setting (typo?): {sorted(unknown)}"


@pytest.mark.parametrize("target", APP_TARGETS)
def test_config_values_load(target: str) -> None:
    """The ConfigMap with the example Secret is a valid configuration (what the pods will see)."""
    env = {**config_data(render(target)), **example_secret()["stringData"], "NODE_ID": "roomcast-gateway-7d9f8-x2k4q"}
    settings = Settings.load(env)
    assert settings.host == "0.0.0.0" and not settings.auto_migrate


def test_config_matches_settings_defaults_except_deliberate_changes() -> None:
    config = config_data(render("base"))
    loaded, defaults = Settings.load(config), Settings.load({})
    differ = {spec.env for spec in SPECS
              if spec.env in config and getattr(loaded, spec.field) != getattr(defaults, spec.field)}
    assert differ == set(DELIBERATE), (
        f"base ConfigMap values differ from roomcast.settings defaults: {sorted(differ - set(DELIBERATE))}; "
        f"expected differences: {sorted(DELIBERATE)}"
    )


@pytest.mark.parametrize("target", APP_TARGETS)
def test_roomcast_pods_read_config_secret_and_node_id(target: str) -> None:
    for where, c, _pod in containers(render(target)):
        refs = [next(iter(e.values()))["name"] for e in c.get("envFrom", [])]
        assert refs == ["roomcast-config", "roomcast-secrets"], f"{where}: envFrom {refs}"
        if c["name"] in ("gateway", "coordinator"):
            node = [e for e in c.get("env", []) if e["name"] == "NODE_ID"]
            assert node and node[0]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", f"{where}: NODE_ID"


def test_redis_cluster_overlay_builds_redis_url_from_the_charts_secret() -> None:
    """deploy/k8s/overlays/redis-cluster: the example overlay with REDIS_URL made from the Bitnami
    redis-cluster chart's password Secret (expanded by Kubernetes: defined after the password),
    naming the chart's Service; the URL is a valid setting. Everything else is the example's."""
    docs = render("redis-cluster")
    example = {ident(d): d for d in render("example")}
    assert {ident(d) for d in docs} == set(example)
    for name, container in (("roomcast-gateway", "gateway"), ("roomcast-coordinator", "coordinator")):
        (c,) = [c for c in find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
                if c["name"] == container]
        env = [e["name"] for e in c["env"]]
        assert env.index("REDIS_PASSWORD") < env.index("REDIS_URL"), env
        password = next(e for e in c["env"] if e["name"] == "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]
        assert password == {"name": "redis-cluster", "key": "redis-password"}
        url = next(e for e in c["env"] if e["name"] == "REDIS_URL")["value"]
        assert url == "redis://:$(REDIS_PASSWORD)@redis-cluster:6379/0"
        loaded = Settings.load({**config_data(docs), **example_secret()["stringData"], "NODE_ID": "x",
                                "REDIS_URL": url.replace("$(REDIS_PASSWORD)", "s3cretPassw0rd")})
        assert loaded.redis_url == "redis://:s3cretPassw0rd@redis-cluster:6379/0"
    # The migration Job needs no Redis: it keeps the example's environment.
    assert find(docs, "Job", "roomcast-migrate") == example["Job/roomcast-migrate"]


def test_migration_job() -> None:
    docs = render("example")
    job = find(docs, "Job", "roomcast-migrate")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["coordinator", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
    assert 0 < job["spec"]["backoffLimit"] <= 10
    assert job["spec"]["ttlSecondsAfterFinished"] > 0 and job["spec"]["activeDeadlineSeconds"] > 0
    assert config_data(docs)["AUTO_MIGRATE"] == "false", "with a migration Job, AUTO_MIGRATE must be false"


# ---------------------------------------------------------------- (c) policy: network and monitoring


@pytest.mark.parametrize("target", APP_TARGETS)
def test_services_and_monitors_select_their_pods(target: str) -> None:
    docs = render(target)
    for name in ("roomcast-gateway", "roomcast-coordinator"):
        deploy = find(docs, "Deployment", name)
        (c,) = deploy["spec"]["template"]["spec"]["containers"]
        service = find(docs, "Service", name)
        assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(deploy)), f"Service {name} selects no pod"
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        for p in ports.values():
            container_port(c, p["targetPort"])
        monitor = find(docs, "ServiceMonitor", name)
        # deploy/prometheus/rules.yml expects the scrape jobs roomcast-gateway and
        # roomcast-coordinator: a ServiceMonitor's job is the Service name unless jobLabel is set.
        assert "jobLabel" not in monitor["spec"], "jobLabel would rename the job the alert rules select"
        assert selects(monitor["spec"]["selector"], service["metadata"]["labels"]), f"ServiceMonitor {name} selects no Service"
        for ep in monitor["spec"]["endpoints"]:
            assert ep["port"] in ports and ep["path"] == "/metrics"
            assert seconds(ep["scrapeTimeout"]) <= seconds(ep["interval"])
    gateway_port = find(docs, "Service", "roomcast-gateway")["spec"]["ports"]
    assert [p["port"] for p in gateway_port] == [int(config_data(docs)["GATEWAY_PORT"])]


def test_podmonitors_select_the_pods() -> None:
    app = render("base")
    for monitor in render("podmonitors"):
        deploy = find(app, "Deployment", monitor["metadata"]["name"])
        (c,) = deploy["spec"]["template"]["spec"]["containers"]
        assert selects(monitor["spec"]["selector"], pod_labels(deploy))
        for ep in monitor["spec"]["podMetricsEndpoints"]:
            container_port(c, ep["port"])
            assert ep["path"] == "/metrics" and seconds(ep["scrapeTimeout"]) <= seconds(ep["interval"])


@pytest.mark.parametrize("target", APP_TARGETS)
def test_ingress_keeps_websockets_open(target: str) -> None:
    docs = render(target)
    ingress = find(docs, "Ingress", "roomcast")
    notes = ingress["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600, key
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    service = find(docs, "Service", "roomcast-gateway")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["path"] == "/ws", "only the WebSocket endpoint is public"
            backend = path["backend"]["service"]
            assert backend["name"] == "roomcast-gateway"
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    hosts = [r["host"] for r in ingress["spec"]["rules"]]
    assert hosts == ingress["spec"]["tls"][0]["hosts"], "TLS must cover the host"
    if target == "example":
        assert hosts == ["roomcast.example.com"]


def test_grafana_dashboard_configmap() -> None:
    dashboard_file = ROOT / "deploy" / "grafana" / "dashboard.json"
    cm = find(render("base"), "ConfigMap", "roomcast-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = cm["data"]
    assert key == "roomcast.json"
    assert json.loads(cm["data"][key]) == json.loads(dashboard_file.read_text(encoding="utf-8"))


def _squeeze_exprs(node: Any) -> Any:
    """The rules with the whitespace of each PromQL `expr` collapsed: kustomize v5 re-folds
    multi-line YAML scalars (an extra newline), which PromQL ignores."""
    if isinstance(node, dict):
        return {k: " ".join(v.split()) if k == "expr" and isinstance(v, str) else _squeeze_exprs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_squeeze_exprs(v) for v in node]
    return node


def test_prometheusrule_is_generated_from_the_rules_file() -> None:
    script = K8S / "prometheusrule.py"
    proc = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text(encoding="utf-8"))
    rendered = find(render("base"), "PrometheusRule", "roomcast")["spec"]
    assert _squeeze_exprs(rendered) == _squeeze_exprs(rules)
    assert rules["groups"] and all(group["rules"] for group in rules["groups"])


# ---------------------------------------------------------------- (c) the Locust example


def locust_files() -> set[Path]:
    """loadtests/locustfile.py and the modules next to it that it imports by plain name (Locust
    puts the locustfile's directory on sys.path), transitively: what the pods need in /locust."""
    todo, found = [ROOT / "loadtests" / "locustfile.py"], set()
    while todo:
        path = todo.pop()
        found.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else []
            for name in names:
                sibling = path.with_name(f"{name.split('.')[0]}.py")
                if sibling.is_file() and sibling not in found:
                    todo.append(sibling)
    return found


def test_loadtest_runs_the_locustfile() -> None:
    docs = render("loadtest")
    cm = find_prefix(docs, "ConfigMap", "roomcast-locustfile")
    # The locustfile and every helper module it imports, each as its own file in /locust.
    files = locust_files()
    assert set(cm["data"]) == {p.name for p in files}
    for path in files:
        assert cm["data"][path.name] == path.read_text(encoding="utf-8"), path.name
    master = find(docs, "Deployment", "roomcast-locust-master")
    worker = find(docs, "Deployment", "roomcast-locust-worker")
    service = find(docs, "Service", "roomcast-locust-master")
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(master))
    assert not selects({"matchLabels": service["spec"]["selector"]}, pod_labels(worker))
    assert {p["port"] for p in service["spec"]["ports"]} == {5557, 8089}
    for deploy, role in ((master, "--master"), (worker, "--worker")):
        pod = deploy["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["command"] == ["locust"] and role in c["args"]
        assert c["args"][c["args"].index("--locustfile") + 1] == "/locust/locustfile.py"
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/locust")
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == cm["metadata"]["name"]
    args = worker["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--master-host") + 1] == service["metadata"]["name"]
    env = find(docs, "ConfigMap", "roomcast-locust-env")["data"]
    assert env["LOCUST_HOST"].startswith("ws://roomcast-gateway:")


# ---------------------------------------------------------------- (d) Dockerfile


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """[(FROM line, [(INSTRUCTION, arguments), ...]), ...] with continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", re.sub(r"^\s*#.*\n", "", text, flags=re.M))
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instr, _, args = line.strip().partition(" ")
        if instr.upper() == "FROM":
            stages.append((args.strip(), []))
        elif stages:
            stages[-1][1].append((instr.upper(), args.strip()))
    return stages


def test_dockerfile_is_multi_stage_with_a_slim_final_stage() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = dockerfile_stages()
    assert len(stages) >= 2, "build tools belong in a separate build stage"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert base and re.fullmatch(r"python:3\.1[1-9]-slim(-bookworm)?", base.group(1)), "final image should be python:3.11-slim"
    final_from, final = stages[-1]
    assert final_from.split()[0] in ("${PYTHON_IMAGE}", base.group(1))
    runs = " ".join(args for instr, args in final if instr == "RUN")
    for tool in ("build-essential", "gcc", "g++", "make", "-dev ", "pip install", "apt-get install"):
        assert tool not in runs, f"the final stage installs {tool!r}; build in the build stage"
    copies = [args for instr, args in final if instr == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), "the final stage copies only from the build stage"
    build_runs = " ".join(args for _from, instrs in stages[:-1] for instr, args in instrs if instr == "RUN")
    assert "build-essential" in build_runs and "pip install" in build_runs


def test_dockerfile_final_stage_runs_the_gateway_as_non_root() -> None:
    _from, final = dockerfile_stages()[-1]
    users = [args for instr, args in final if instr == "USER"]
    assert users, "the final stage has no USER: it would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == 10001, f"USER {users[-1]}: use the numeric uid 10001 (runAsNonRoot checks it)"
    envs = " ".join(args for instr, args in final if instr == "ENV")
    assert "GATEWAY_HOST=0.0.0.0" in envs
    assert "COORDINATOR_HOST=0.0.0.0" in envs
    exposed = {int(p) for instr, args in final if instr == "EXPOSE" for p in args.split()}
    defaults = {spec.env: spec.default for spec in SPECS}
    assert exposed == {defaults["GATEWAY_PORT"], defaults["COORDINATOR_PORT"]}
    assert [args for instr, args in final if instr == "CMD"] == ['["gateway"]']
    assert not [args for instr, args in final if instr == "HEALTHCHECK"], "Kubernetes probes, not a HEALTHCHECK"
    for _where, _c, pod in containers(render("base")):
        assert pod["securityContext"]["runAsUser"] == int(uid), "the pods' runAsUser should be the image's uid"


def test_dockerfile_installs_uvloop() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    deps = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.M | re.S)
    assert deps and '"uvloop' in deps.group(1), "uvloop must be a runtime dependency (the image installs those)"
    build = " ".join(args for _f, instrs in dockerfile_stages()[:-1] for instr, args in instrs if instr == "RUN")
    assert "import uvloop" in build, "the build stage should prove uvloop imports"


def test_image_installs_every_module_the_runtime_imports() -> None:
    """The image installs [project] dependencies only (plus an extra on request): every
    third-party module that roomcast, gateway or coordinator import, even lazily, must be one."""
    import ast
    import importlib.metadata
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    declared = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for package in ("roomcast", "gateway", "coordinator"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                           and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                           for stmt in block.body for n in ast.walk(stmt)}
            for node in ast.walk(tree):
                if id(node) in typing_only:
                    continue
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top in ("roomcast", "gateway", "coordinator"):
                        continue
                    provided = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                    if not provided & declared:
                        missing.setdefault(top, str(path.relative_to(ROOT)))
    assert not missing, f"imported but not in [project] dependencies, so missing from the image: {missing}"


def test_image_gets_every_data_file() -> None:
    """`pip install .` in the build stage copies only .py files and the package-data globs of
    pyproject.toml: every other file in the packages (migrations, static files) must match one,
    or the image lacks it (`coordinator migrate` without its SQL, say)."""
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    shipped: set[Path] = set()
    for package, globs in tool.get("package-data", {}).items():
        base = ROOT.joinpath(*package.split("."))
        for pattern in globs:
            shipped |= {p for p in base.glob(pattern) if p.is_file()}
    missing = [
        str(path.relative_to(ROOT))
        for package in ("roomcast", "gateway", "coordinator")
        for path in sorted((ROOT / package).rglob("*"))
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
        and path not in shipped
    ]
    assert not missing, f"files no package-data glob of pyproject.toml ships (not in the image): {missing}"


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", ".dockerignore should start by excluding everything (an allow-list)"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert not allowed & {".venv", ".git", "tests", "test-output", "deploy"}
    for _from, instrs in dockerfile_stages():
        for instr, args in instrs:
            if instr == "COPY" and not args.startswith("--from="):
                for src in args.split()[:-1]:
                    assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"


# ---------------------------------------------------------------- docs/kubernetes.md


def test_scaling_doc_names_real_files_and_the_overlay() -> None:
    """docs/scaling.md (capacity model, Redis Cluster on Kubernetes) names files that exist, and
    the overlay it describes."""
    text = (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    for path in set(re.findall(r"\b((?:deploy|loadtests)/[\w./-]*\w)", text)):
        assert (ROOT / path).exists(), f"docs/scaling.md names {path}, which does not exist"
    for name in ("deploy/k8s/overlays/redis-cluster", "redis-url.yaml", "REDIS_URL", "rediss://", "loadtests/capacity.py"):
        assert name in text, f"docs/scaling.md does not mention {name}"


def test_kubernetes_walkthrough_names_real_files() -> None:
    walkthrough = ROOT / "docs" / "kubernetes.md"
    assert walkthrough.is_file(), "docs/kubernetes.md (the Kubernetes walkthrough) is missing"
    section = walkthrough.read_text(encoding="utf-8")
    for path in set(re.findall(r"\b((?:deploy|loadtests)/[\w./-]*\w)", section)):
        assert (ROOT / path).exists(), f"docs/kubernetes.md names {path}, which does not exist"
    for name in ("roomcast-secrets", "roomcast-migrate", "DRAIN_WINDOW", "/readyz", "/healthz"):
        assert name in section, f"docs/kubernetes.md does not mention {name}"
