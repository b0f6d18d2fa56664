"""Kubernetes: a Deployment + Service (+ HPA); a LeaderWorkerSet for a multi-node plan."""

from __future__ import annotations

import math
from typing import Any

from qwdeploy.export.common import (
    API_KEY_ENV,
    CONTAINER_HF_HOME,
    CONTAINER_VLLM_CACHE,
    DEFAULT_OPTIONS,
    LWS_API,
    PROBE_PERIOD_S,
    ExportOptions,
    cold_start_s,
    export_name,
    header,
    image,
    probe_script,
    start_env,
    startup_probe_timing,
    to_yaml,
    vllm_argv,
)
from qwdeploy.planning.plan import Plan
from qwdeploy.planning.stages import RAY_PORT
from qwdeploy.vllm import ray


def _labels(name: str) -> dict[str, Any]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "qwdeploy"}


def _meta(name: str, opts: ExportOptions, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if opts.namespace:
        meta["namespace"] = opts.namespace
    meta.update(extra)
    return meta


def _http_probe(plan: Plan, opts: ExportOptions, path: str, key: bool) -> dict[str, Any]:
    """Probe action on `path`: httpGet, or python3 with the bearer key when one is required."""
    if not key:
        return {"httpGet": {"path": path, "port": "http"}}
    url = f"http://127.0.0.1:{opts.port}{path}"
    return {"exec": {"command": ["python3", "-c", probe_script(url, f"os.environ['{API_KEY_ENV}']")]}}


def _probes(plan: Plan, opts: ExportOptions) -> dict[str, Any]:
    """startupProbe sized from the predicted cold start; readiness on /v1/models; liveness on
    /health (cheap and unauthenticated, only once started)."""
    delay, threshold = startup_probe_timing(plan)
    return {
        "startupProbe": {
            **_http_probe(plan, opts, "/v1/models", opts.api_key),
            "initialDelaySeconds": delay,
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": 5,
            "failureThreshold": threshold,
        },
        "readinessProbe": {
            **_http_probe(plan, opts, "/v1/models", opts.api_key),
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 30,
            "timeoutSeconds": 10,
            "failureThreshold": 3,
        },
    }


def _env(plan: Plan, opts: ExportOptions, name: str) -> list[dict[str, Any]]:
    env = {
        "HF_HOME": CONTAINER_HF_HOME,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CACHE_ROOT": CONTAINER_VLLM_CACHE,
        "VLLM_NO_USAGE_STATS": "1",
        **start_env(plan),
    }
    env.update({k: v for k, v in plan.env.items() if k != "CUDA_VISIBLE_DEVICES"})
    out: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    if opts.api_key:
        out.append(
            {
                "name": API_KEY_ENV,
                "valueFrom": {"secretKeyRef": {"name": f"{name}-api-key", "key": "api-key"}},
            }
        )
    return out


def _shm_limit(plan: Plan) -> str:
    """/dev/shm for PyTorch/NCCL between the TP workers: 2 GiB, 8 GiB with tensor parallel."""
    return "8Gi" if plan.tensor_parallel_size > 1 else "2Gi"


def compile_cache_claim(opts: ExportOptions, name: str) -> str:
    """The PVC that keeps vLLM's compile cache (VLLM_CACHE_ROOT) across pod restarts: a restart
    then starts warm (torch.compile and JIT kernels found), the point of a hot standby."""
    return opts.compile_cache_pvc or f"{name}-compile-cache"


def _volumes(plan: Plan, opts: ExportOptions, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    mounts = [
        {"name": "hf-cache", "mountPath": CONTAINER_HF_HOME},
        {"name": "vllm-cache", "mountPath": CONTAINER_VLLM_CACHE},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    volumes = [
        {"name": "hf-cache", "persistentVolumeClaim": {"claimName": opts.cache_pvc}},
        {"name": "vllm-cache", "persistentVolumeClaim": {"claimName": compile_cache_claim(opts, name)}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _shm_limit(plan)}},
    ]
    return mounts, volumes


GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set on each GPU node by NVIDIA's GPU feature discovery


def _affinity(plan: Plan) -> dict[str, Any]:
    """Only nodes with the planned GPU: the plan's memory sizes hold for that product alone.
    Empty when qwdeploy knows no label for the GPU (the header says so)."""
    labels = list(plan.gpu.spec.product_labels)
    if not labels:
        return {}
    term = {"matchExpressions": [{"key": GPU_PRODUCT_LABEL, "operator": "In", "values": labels}]}
    return {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}
    }


def _needs(plan: Plan, opts: ExportOptions, name: str) -> list[str]:
    """What must exist in the cluster before these manifests run."""
    multi = ray.nodes(plan) > 1
    shared = "ReadWriteMany: every pod writes it" if opts.hpa or multi else "ReadWriteOnce"
    needs = [
        "the NVIDIA device plugin (nvidia.com/gpu)",
        f"a PVC {opts.cache_pvc!r} holding the Hugging Face cache with {plan.model}"
        + (" (ReadWriteMany or ReadOnlyMany: every node reads it)" if multi else ""),
        f"a PVC {compile_cache_claim(opts, name)!r} ({shared}) for vLLM's compile cache (VLLM_CACHE_ROOT): "
        "a restarted pod starts warm",
    ]
    if multi:
        needs.append("the LeaderWorkerSet controller (lws)")
    if opts.api_key:
        needs.append(f"the API key: kubectl create secret generic {name}-api-key --from-file=api-key=./api-key")
    return ["# Needs: " + needs[0] + ";"] + [f"#   {n};" for n in needs[1:-1]] + [f"#   {needs[-1]}."]


def _affinity_note(plan: Plan) -> str:
    labels = plan.gpu.spec.product_labels
    if labels:
        return f"# Pods run only on nodes whose {GPU_PRODUCT_LABEL} (GPU feature discovery) is {' or '.join(labels)}."
    return (
        f"# No node affinity: qwdeploy knows no {GPU_PRODUCT_LABEL} label for {plan.gpu.name}; "
        "add one so the pods land on the planned GPU."
    )


def _gpu_resources(plan: Plan) -> dict[str, Any]:
    gpus = str(plan.tensor_parallel_size)  # GPUs of one pod: one TP group (one node)
    return {"limits": {"nvidia.com/gpu": gpus}, "requests": {"nvidia.com/gpu": gpus}}


def _vllm_container(
    plan: Plan,
    opts: ExportOptions,
    name: str,
    command: list[str],
    args: list[str],
    extra_env: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    mounts, _ = _volumes(plan, opts, name)
    return {
        "name": "vllm",
        "image": image(plan, opts),
        "command": command,
        "args": args,
        "env": _env(plan, opts, name) + list(extra_env),
        "ports": [{"name": "http", "containerPort": opts.port}],
        "resources": _gpu_resources(plan),
        **_probes(plan, opts),
        "volumeMounts": mounts,
    }


def _pod_annotations(opts: ExportOptions) -> dict[str, Any]:
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(opts.port),
        "prometheus.io/path": "/metrics",
    }


def _service(name: str, opts: ExportOptions, selector: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, opts, labels=_labels(name)),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": opts.port, "targetPort": "http"}],
        },
    }


def _hpa(plan: Plan, name: str, opts: ExportOptions, target: dict[str, Any]) -> dict[str, Any]:
    scale_up_period = min(1800, max(60, math.ceil(cold_start_s(plan))))
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(name, opts, labels=_labels(name)),
        "spec": {
            "scaleTargetRef": target,
            "minReplicas": 1,
            "maxReplicas": opts.max_replicas,
            # vLLM's own gauge, served on /metrics and exposed to the custom metrics API by an
            # adapter (e.g. prometheus-adapter) under the same name.
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "vllm:num_requests_waiting"},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": str(opts.hpa_waiting_requests),
                        },
                    },
                }
            ],
            "behavior": {
                # One replica at a time, no faster than one cold start; slow to scale down.
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": scale_up_period}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 600,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}],
                },
            },
        },
    }


def _api_key_wrapper(command: str) -> str:
    """sh -c script: fail fast without the key, then run `command "$@"`."""
    return f'[ -n "${API_KEY_ENV}" ] || {{ echo "{API_KEY_ENV} is empty" >&2; exit 1; }}; exec {command} "$@"'


def kubernetes(plan: Plan, opts: ExportOptions = DEFAULT_OPTIONS) -> str:
    """Deployment + Service (+ HPA); a LeaderWorkerSet + Service for a multi-node plan."""
    name = export_name(plan, opts)
    docs = _leader_worker_set(plan, opts, name) if ray.nodes(plan) > 1 else _deployment(plan, opts, name)
    head = header(plan, "Kubernetes manifests", opts) + _needs(plan, opts, name) + [_affinity_note(plan)]
    if opts.hpa:
        head.append("# The HPA reads vllm:num_requests_waiting through the custom metrics API.")
    return "\n".join(head) + "\n" + "---\n".join(to_yaml(d) for d in docs)


def _deployment(plan: Plan, opts: ExportOptions, name: str) -> list[dict[str, Any]]:
    selector = {"app.kubernetes.io/name": name}
    _, volumes = _volumes(plan, opts, name)
    if opts.api_key:
        command, args = (
            ["/bin/sh", "-c", _api_key_wrapper("vllm serve"), "vllm"],
            vllm_argv(plan, opts),
        )
    else:
        command, args = ["vllm", "serve"], vllm_argv(plan, opts)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, opts, labels=_labels(name)),
        "spec": {
            "replicas": 1,
            # Recreate: a rolling update would need a second set of GPUs while both run.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": _labels(name), "annotations": _pod_annotations(opts)},
                "spec": {
                    "terminationGracePeriodSeconds": 60,
                    **_affinity(plan),
                    "containers": [_vllm_container(plan, opts, name, command, args)],
                    "volumes": volumes,
                },
            },
        },
    }
    docs = [deployment, _service(name, opts, selector)]
    if opts.hpa:
        docs.append(_hpa(plan, name, opts, {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}))
    return docs


_HOST_IP: dict[str, Any] = {"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def _leader_worker_set(plan: Plan, opts: ExportOptions, name: str) -> list[dict[str, Any]]:
    """One LeaderWorkerSet group = one model replica over `nodes` pods (leaderworkerset.x-k8s.io).

    The leader starts the Ray head and vLLM (Ray executor); each worker joins the head at
    $(LWS_LEADER_ADDRESS), which the LWS controller sets in every pod. vLLM waits for the
    workers' GPUs (placement group) before loading the model.
    """
    _, volumes = _volumes(plan, opts, name)

    def template(role: str, container: dict[str, Any], annotations: dict[str, str] | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"labels": {**_labels(name), "role": role}}
        if annotations:
            metadata["annotations"] = annotations
        spec = {"terminationGracePeriodSeconds": 60, **_affinity(plan), "containers": [container], "volumes": volumes}
        return {"metadata": metadata, "spec": spec}

    lws = {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": _meta(name, opts, labels=_labels(name)),
        "spec": {
            "replicas": 1,
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": ray.nodes(plan),
                # A lost node breaks the pipeline: recreate the whole group.
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": template("leader", _ray_leader(plan, opts, name), _pod_annotations(opts)),
                "workerTemplate": template("worker", _ray_worker(plan, opts, name), None),
            },
        },
    }
    selector = {"leaderworkerset.sigs.k8s.io/name": name, "role": "leader"}
    docs = [lws, _service(name, opts, selector)]
    if opts.hpa:
        docs.append(_hpa(plan, name, opts, {"apiVersion": LWS_API, "kind": "LeaderWorkerSet", "name": name}))
    return docs


def _ray_leader(plan: Plan, opts: ExportOptions, name: str) -> dict[str, Any]:
    ray_head = f'ray start --head --port={RAY_PORT} --node-ip-address="$VLLM_HOST_IP" --disable-usage-stats'
    if opts.api_key:
        script = _api_key_wrapper("vllm serve").replace("exec vllm", f"{ray_head} && exec vllm")
    else:
        script = f'{ray_head} && exec vllm serve "$@"'
    return _vllm_container(plan, opts, name, ["/bin/sh", "-c", script, "vllm"], vllm_argv(plan, opts), (_HOST_IP,))


def _ray_worker(plan: Plan, opts: ExportOptions, name: str) -> dict[str, Any]:
    script = (
        f'until ray start --address="$LWS_LEADER_ADDRESS:{RAY_PORT}" '
        f'--node-ip-address="$VLLM_HOST_IP" --disable-usage-stats --block; '
        f'do echo "waiting for the Ray head at $LWS_LEADER_ADDRESS:{RAY_PORT}" >&2; sleep 5; done'
    )
    mounts, _ = _volumes(plan, opts, name)
    env = [e for e in _env(plan, opts, name) if e["name"] != API_KEY_ENV] + [_HOST_IP]
    return {
        "name": "ray-worker",
        "image": image(plan, opts),
        "command": ["/bin/sh", "-c", script],
        "env": env,
        "resources": _gpu_resources(plan),
        "volumeMounts": mounts,
    }
