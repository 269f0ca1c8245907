"""The Helm chart, rendered offline and checked object by object.

Rendering and linting go through `helm-python-sdk`, which binds Helm's own Go engine (a shared
library inside its wheel) with ctypes: the same template functions, values coalescing and
values.schema.json validation as `helm template` / `helm lint`, with no helm binary and no
cluster. Core Kubernetes objects are validated against the OpenAPI schemas that
`kubernetes-validate` ships; CRD-based objects (KEDA, Prometheus Operator, Strimzi) are checked
by hand for the fields their controllers require.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import helm_python as helm
except Exception as exc:  # ImportError, or OSError when the bundled libhelm_c cannot load
    pytest.skip(
        f"helm-python-sdk is not usable ({exc}); install the dev extra to render the chart",
        allow_module_level=True,
    )
try:
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version
except ImportError as exc:
    pytest.skip(
        f"kubernetes-validate is not installed ({exc}); install the dev extra",
        allow_module_level=True,
    )

CHART = Path(__file__).resolve().parents[2] / "helm" / "notaflow"
CI_VALUES = CHART / "ci" / "ci-values.yaml"
RELEASE = "rel"
NAMESPACE = "fiscal"
# The consumers' built-in drain period on SIGTERM (consumers/runner.py: Runner grace).
DRAIN_SECONDS = 20
KUBE_VERSION = latest_version()

Manifest = dict[str, Any]


def ci_values() -> dict[str, Any]:
    return yaml.safe_load(CI_VALUES.read_text())


@cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(values: dict[str, Any] | None = None) -> list[Manifest]:
    """Every object the chart renders (hooks included), NOTES.txt left out."""
    out = _chart().render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[Manifest] = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@pytest.fixture(scope="module")
def default() -> list[Manifest]:
    return render()


@pytest.fixture(scope="module")
def full() -> list[Manifest]:
    return render(ci_values())


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} not rendered exactly once"
    return found[0]


def pod_spec(doc: Manifest) -> Manifest:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def pod_templates(docs: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    for d in docs:
        if d["kind"] in {"Deployment", "Job"}:
            yield d, d["spec"]["template"]
        elif d["kind"] == "CronJob":
            yield d, d["spec"]["jobTemplate"]["spec"]["template"]


def consumer_deployments(docs: list[Manifest]) -> dict[str, Manifest]:
    return {
        d["metadata"]["labels"]["notaflow.io/consumer"]: d
        for d in of_kind(docs, "Deployment")
        if "notaflow.io/consumer" in d["metadata"]["labels"]
    }


def env_of(container: Manifest) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def checksum(docs: list[Manifest], name: str = f"{RELEASE}-notaflow-ingress") -> str:
    dep = one(docs, "Deployment", name)
    return str(dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"])


# --- lint and schema validation of every object -------------------------------------------


@pytest.mark.parametrize("values_file", [None, CI_VALUES], ids=["default", "ci"])
def test_lint_is_clean(values_file: Path | None) -> None:
    values = yaml.safe_load(values_file.read_text()) if values_file else None
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


CRD_REQUIRED: dict[str, tuple[str, list[str]]] = {
    # kind: (apiVersion, required paths under spec)
    "ScaledObject": ("keda.sh/v1alpha1", ["scaleTargetRef.name", "triggers"]),
    "ServiceMonitor": ("monitoring.coreos.com/v1", ["selector.matchLabels", "endpoints"]),
    "KafkaTopic": ("kafka.strimzi.io/v1beta2", ["topicName", "partitions", "replicas"]),
}


def _dig(obj: Manifest, dotted: str) -> Any:
    for part in dotted.split("."):
        assert isinstance(obj, dict) and part in obj, f"missing {dotted}"
        obj = obj[part]
    return obj


@pytest.mark.parametrize("which", ["default", "full"])
def test_every_object_is_valid(which: str, request: pytest.FixtureRequest) -> None:
    docs: list[Manifest] = request.getfixturevalue(which)
    for doc in docs:
        kind = doc["kind"]
        assert doc["metadata"]["namespace"] == NAMESPACE
        if kind in CRD_REQUIRED:
            api_version, required = CRD_REQUIRED[kind]
            assert doc["apiVersion"] == api_version
            for path in required:
                assert _dig(doc["spec"], path), f"{kind} {path} empty"
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}/{doc['metadata']['name']}: {exc.path}: {exc.message}")


def test_default_renders_only_the_core(default: list[Manifest]) -> None:
    kinds = sorted(d["kind"] for d in default)
    # Two ConfigMaps and Secrets: the release's own and the migrate hook's copies.
    assert kinds == [
        "ConfigMap",
        "ConfigMap",
        "CronJob",
        "Deployment",
        "Deployment",
        "Deployment",
        "Deployment",
        "Deployment",
        "Job",
        "Secret",
        "Secret",
        "Service",
        "ServiceAccount",
    ]


def test_ci_values_turn_everything_on(full: list[Manifest]) -> None:
    kinds = {d["kind"] for d in full}
    assert kinds >= {
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ScaledObject",
        "ServiceMonitor",
        "KafkaTopic",
        "CronJob",
    }
    assert len(of_kind(full, "CronJob")) == 2
    assert len(of_kind(full, "KafkaTopic")) == 8


# --- values.schema.json --------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"ingress": {"replicaCount": -1}},
        {"consumers": {"emission": {"replicaCount": -1}}},
        {"unknownKey": True},
        {"ingress": {"service": {"prot": 80}}},
        {"consumers": {"emission": {"concurency": 10}}},
        {"config": {"logLevel": "LOUD"}},
        {"config": {"kafka": {"partitions": 0}}},
        {"config": {"kafka": {"securityProtocol": "TLS"}}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"config": {"extra": {"smtp_host": "lower-case is not an env name"}}},
    ],
    ids=lambda v: yaml.safe_dump(v, default_flow_style=True).strip(),
)
def test_schema_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        _chart().validate_schema(_chart().merge_values(bad))
    with pytest.raises(helm.HelmValuesError):
        render(bad)


def test_schema_accepts_defaults_and_ci_values() -> None:
    _chart().validate_schema(_chart().merge_values({}))
    _chart().validate_schema(_chart().merge_values(ci_values()))


# --- the processes -------------------------------------------------------------------------


def test_ingress_probes_and_port(default: list[Manifest]) -> None:
    dep = one(default, "Deployment", f"{RELEASE}-notaflow-ingress")
    (container,) = pod_spec(dep)["containers"]
    assert container["args"] == ["ingress"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert env_of(container)["NOTAFLOW_HOST"] == "0.0.0.0"
    assert env_of(container)["NOTAFLOW_PORT"] == "8000"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    svc = one(default, "Service", f"{RELEASE}-notaflow-ingress")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_one_deployment_per_enabled_consumer(default: list[Manifest], full: list[Manifest]) -> None:
    assert set(consumer_deployments(default)) == {
        "emission",
        "cancellation",
        "notification",
        "billing",
    }
    deployments = consumer_deployments(full)
    assert set(deployments) == {"emission", "cancellation", "notification", "billing"}
    selectors = set()
    for name, dep in deployments.items():
        assert dep["metadata"]["name"] == f"{RELEASE}-notaflow-consumer-{name}"
        (container,) = pod_spec(dep)["containers"]
        assert container["args"] == ["consume", name]
        selectors.add(tuple(sorted(dep["spec"]["selector"]["matchLabels"].items())))
    assert len(selectors) == len(deployments), "each consumer Deployment selects only its own pods"
    emission = pod_spec(deployments["emission"])["containers"][0]
    assert env_of(emission)["NOTAFLOW_CONSUMER_CONCURRENCY"] == "50"
    assert env_of(emission)["EXAMPLE"] == "1"
    assert env_of(emission)["TZ"] == "America/Sao_Paulo"
    # An entry's own replicaCount wins over consumerDefaults; KEDA-scaled ones leave it out.
    assert deployments["cancellation"]["spec"]["replicas"] == 2
    assert "replicas" not in deployments["emission"]["spec"]


def test_a_new_consumer_is_one_values_entry() -> None:
    docs = render({"consumers": {"audit-log": {"enabled": True, "topics": ["lifecycle"]}}})
    assert set(consumer_deployments(docs)) == {
        "emission",
        "cancellation",
        "notification",
        "billing",
        "audit-log",
    }
    dep = consumer_deployments(docs)["audit-log"]
    assert pod_spec(dep)["containers"][0]["args"] == ["consume", "audit-log"]


def test_consumer_probes_use_the_health_port(default: list[Manifest]) -> None:
    (container,) = pod_spec(consumer_deployments(default)["emission"])["containers"]
    assert container["ports"] == [{"name": "health", "containerPort": 8081, "protocol": "TCP"}]
    assert env_of(container)["NOTAFLOW_HEALTH_PORT"] == "8081"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}

    docs = render({"consumerDefaults": {"healthPort": 9100}})
    (container,) = pod_spec(consumer_deployments(docs)["emission"])["containers"]
    assert container["ports"][0]["containerPort"] == 9100
    assert env_of(container)["NOTAFLOW_HEALTH_PORT"] == "9100"

    # Until a consumer serves its health port, its probes can be switched off with null.
    off = dict.fromkeys(("livenessProbe", "readinessProbe", "startupProbe"))
    docs = render({"consumers": {"emission": off}})
    (container,) = pod_spec(consumer_deployments(docs)["emission"])["containers"]
    assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(container)


def test_consumers_outlive_their_drain(full: list[Manifest]) -> None:
    for name, dep in consumer_deployments(full).items():
        grace = pod_spec(dep)["terminationGracePeriodSeconds"]
        assert grace > DRAIN_SECONDS, name
    assert (
        pod_spec(consumer_deployments(full)["notification"])["terminationGracePeriodSeconds"] == 60
    )
    with pytest.raises(helm.HelmRenderError, match="drainSeconds"):
        render({"consumers": {"emission": {"terminationGracePeriodSeconds": DRAIN_SECONDS}}})


def test_migrate_runs_as_a_pre_install_and_pre_upgrade_hook(default: list[Manifest]) -> None:
    job = one(default, "Job", f"{RELEASE}-notaflow-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = pod_spec(job)["containers"]
    assert container["args"] == ["migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    # Hooks run before the release's own ConfigMap/Secret exist: the Job reads hook copies
    # that are created first (lower weight).
    refs = {next(iter(r)): next(iter(r.values()))["name"] for r in container["envFrom"]}
    assert refs == {
        "configMapRef": f"{RELEASE}-notaflow-migrate",
        "secretRef": f"{RELEASE}-notaflow-migrate",
    }
    for kind in ("ConfigMap", "Secret"):
        copy_ = one(default, kind, f"{RELEASE}-notaflow-migrate")["metadata"]["annotations"]
        assert copy_["helm.sh/hook"] == annotations["helm.sh/hook"]
        assert int(copy_["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    main = one(default, "ConfigMap", f"{RELEASE}-notaflow")
    assert one(default, "ConfigMap", f"{RELEASE}-notaflow-migrate")["data"] == main["data"]


def test_only_the_reconciler_runs_by_default_and_jobs_run_their_command(
    default: list[Manifest], full: list[Manifest]
) -> None:
    [reconcile] = of_kind(default, "CronJob")
    assert pod_spec(reconcile)["containers"][0]["args"] == ["reconcile"]
    jobs = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in of_kind(full, "CronJob")
    }
    assert set(jobs) == {"reconcile", "dunning"}
    assert pod_spec(jobs["reconcile"])["containers"][0]["args"] == ["reconcile"]
    assert pod_spec(jobs["dunning"])["containers"][0]["args"] == ["dunning", "--dry-run"]
    assert jobs["reconcile"]["spec"]["concurrencyPolicy"] == "Forbid"


# --- configuration -------------------------------------------------------------------------


def test_settings_split_between_configmap_and_secret(full: list[Manifest]) -> None:
    data = one(full, "ConfigMap", f"{RELEASE}-notaflow")["data"]
    secret = one(full, "Secret", f"{RELEASE}-notaflow")["stringData"]
    assert data["NOTAFLOW_KAFKA_BOOTSTRAP"] == "kafka-a:9093,kafka-b:9093"
    assert data["NOTAFLOW_KAFKA_PARTITIONS"] == "4"
    assert data["NOTAFLOW_MAX_BODY_BYTES"] == "1048576"
    assert data["NOTAFLOW_KAFKA_IDEMPOTENCE"] == "true"
    assert data["NOTAFLOW_PUBLIC_URL"] == "https://notaflow.example.com"
    assert data["NOTAFLOW_SMTP_PORT"] == "587"
    assert set(secret) == {
        "NOTAFLOW_DATABASE_URL",
        "NOTAFLOW_KAFKA_SASL_PASSWORD",
        "NOTAFLOW_FOCUS_TOKEN",
        "NOTAFLOW_FOCUS_WEBHOOK_SECRET",
        "NOTAFLOW_SMTP_PASSWORD",
    }
    assert not set(secret) & set(data)
    assert all(k.startswith("NOTAFLOW_") for k in data)
    # Every pod reads both.
    for doc, template in pod_templates(full):
        if doc["kind"] == "Job":
            continue
        env_from = template["spec"]["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": f"{RELEASE}-notaflow"}} in env_from
        assert {"secretRef": {"name": f"{RELEASE}-notaflow"}} in env_from


def test_existing_secret_replaces_the_rendered_one() -> None:
    docs = render({"secrets": {"existingSecret": "notaflow-prod", "focusToken": "ignored"}})
    assert of_kind(docs, "Secret") == []
    for _, template in pod_templates(docs):
        env_from = template["spec"]["containers"][0]["envFrom"]
        assert {"secretRef": {"name": "notaflow-prod"}} in env_from


def test_every_pod_template_has_the_config_checksum(full: list[Manifest]) -> None:
    sums = {
        template["metadata"]["annotations"]["checksum/config"]
        for _, template in pod_templates(full)
    }
    assert len(sums) == 1 and len(next(iter(sums))) == 64


def test_checksum_follows_the_config_and_secret_only() -> None:
    base = checksum(render())
    assert checksum(render({"config": {"logLevel": "DEBUG"}})) != base
    assert checksum(render({"secrets": {"focusToken": "t"}})) != base
    assert checksum(render({"config": {"extra": {"SMTP_HOST": "mail"}}})) != base
    assert checksum(render({"ingress": {"replicaCount": 5}})) == base
    consumer = f"{RELEASE}-notaflow-consumer-emission"
    assert checksum(render({"config": {"logLevel": "DEBUG"}}), consumer) != checksum(
        render(), consumer
    )


# --- hardening -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "full"])
def test_pods_run_non_root_with_a_read_only_root(
    which: str, request: pytest.FixtureRequest
) -> None:
    docs: list[Manifest] = request.getfixturevalue(which)
    templates = list(pod_templates(docs))
    assert templates
    for doc, template in templates:
        spec = template["spec"]
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"], where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"], where
            assert c["resources"]["requests"], where


# --- optional integrations -----------------------------------------------------------------


def test_keda_scales_on_group_lag_and_never_past_the_partitions(full: list[Manifest]) -> None:
    scaled = {d["metadata"]["name"]: d for d in of_kind(full, "ScaledObject")}
    # cancellation turns KEDA off in ci-values.
    assert set(scaled) == {
        f"{RELEASE}-notaflow-consumer-emission",
        f"{RELEASE}-notaflow-consumer-notification",
        f"{RELEASE}-notaflow-consumer-billing",
    }
    partitions = ci_values()["config"]["kafka"]["partitions"]
    for name, obj in scaled.items():
        consumer = name.rsplit("-", 1)[-1]
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
        for trigger in spec["triggers"]:
            meta = trigger["metadata"]
            assert trigger["type"] == "kafka"
            assert meta["consumerGroup"] == f"notaflow-{consumer}"
            assert meta["bootstrapServers"] == "kafka-a:9093,kafka-b:9093"
            assert meta["topic"].startswith("notaflow.")
            assert all(isinstance(v, str) for v in meta.values())
            assert trigger["authenticationRef"] == {"name": "notaflow-kafka"}
    topics = [
        t["metadata"]["topic"]
        for t in scaled[f"{RELEASE}-notaflow-consumer-emission"]["spec"]["triggers"]
    ]
    assert topics == [
        "notaflow.nfse.commands",
        "notaflow.nfce.commands",
        "notaflow.provider.events",
    ]


@pytest.mark.parametrize("partitions,asked,expected", [(2, 10, 2), (12, 5, 5), (3, 3, 3)])
def test_keda_max_replicas_is_capped(partitions: int, asked: int, expected: int) -> None:
    values = {
        "config": {"kafka": {"partitions": partitions}},
        "consumerDefaults": {"keda": {"enabled": True, "maxReplicaCount": asked}},
    }
    objects = of_kind(render(values), "ScaledObject")
    assert len(objects) == 4  # one per default consumer
    assert all(obj["spec"]["maxReplicaCount"] == expected for obj in objects)


def test_strimzi_topics_follow_the_kafka_settings(full: list[Manifest]) -> None:
    topics = {d["spec"]["topicName"]: d for d in of_kind(full, "KafkaTopic")}
    assert set(topics) == {
        "notaflow.nfse.commands",
        "notaflow.nfce.commands",
        "notaflow.provider.events",
        "notaflow.lifecycle",
        "notaflow.dead-letter",
        "notaflow.replies",
        "notaflow.billing.events",
        "notaflow.billing.commands",
    }
    for obj in topics.values():
        assert obj["metadata"]["labels"]["strimzi.io/cluster"] == "main"
        assert obj["spec"]["partitions"] == 4
        assert obj["spec"]["replicas"] == 3
        assert all(isinstance(v, str) for v in obj["spec"]["config"].values())
    assert topics["notaflow.dead-letter"]["spec"]["config"]["retention.ms"] == "2592000000"
    assert topics["notaflow.lifecycle"]["spec"]["config"]["retention.ms"] == "604800000"


def test_service_monitor_scrapes_the_ingress_metrics(full: list[Manifest]) -> None:
    (sm,) = of_kind(full, "ServiceMonitor")
    svc = one(full, "Service", f"{RELEASE}-notaflow-ingress")
    assert sm["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert sm["spec"]["endpoints"][0]["port"] == "http"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["metadata"]["labels"]["release"] == "prometheus"


def test_autoscaled_ingress_leaves_replicas_to_the_hpa(full: list[Manifest]) -> None:
    dep = one(full, "Deployment", f"{RELEASE}-notaflow-ingress")
    assert "replicas" not in dep["spec"]
    hpa = one(full, "HorizontalPodAutoscaler", f"{RELEASE}-notaflow-ingress")
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}


def test_false_and_zero_overrides_reach_a_consumer() -> None:
    # consumerDefaults turns KEDA on; a consumer entry turning it off (false) and another
    # scaling to zero (0) must win over the defaults.
    values = copy.deepcopy(ci_values())
    values["consumers"]["emission"]["keda"] = {"minReplicaCount": 0}
    docs = render(values)
    scaled = {d["metadata"]["name"]: d for d in of_kind(docs, "ScaledObject")}
    assert f"{RELEASE}-notaflow-consumer-cancellation" not in scaled
    assert scaled[f"{RELEASE}-notaflow-consumer-emission"]["spec"]["minReplicaCount"] == 0
