#!/usr/bin/env python3
"""Policy check for slotmux's Kubernetes manifests (rendered or standalone).

Usage: policy_check.py FILE.yaml [FILE.yaml ...]   (multi-document YAML)

Every container of every workload (Deployment, StatefulSet, DaemonSet,
ReplicaSet, Job, CronJob, Pod), init containers included, must have:
  - resources.limits.cpu and resources.limits.memory
  - runAsNonRoot: true (container or pod securityContext), no
    privileged, allowPrivilegeEscalation: false, capabilities.drop [ALL],
    readOnlyRootFilesystem: true
  - livenessProbe and readinessProbe; exempt: containers of Jobs/CronJobs
    and classic init containers (they run to completion; Kubernetes rejects
    probes on them). Native sidecars (init containers with restartPolicy:
    Always) are long-running and need probes.
  - a pinned image: a tag other than "latest", or a digest.
Pods must not use hostPath volumes, hostNetwork, hostPID or hostIPC.
Cross-references inside each file: every Service, PodDisruptionBudget and
PodMonitor selector matches some pod template, and named ports they refer to
exist in the selected pods.
cert-manager Certificates (not CAs) must allow "server auth" and "client auth"
(Redis nodes and slotmux present them both ways); the one writing the Secret
redis-tls must name redis-headless.<namespace>.svc (what slotmux checks,
deploy/k8s/tls) and slotmux.<namespace>.svc (what apps check), and have a
namespace (the names depend on it).

Prints one line per violation and a summary; exits 1 on any violation.
"""
import sys

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
RUN_TO_COMPLETION = {"Job", "CronJob"}


def pod_spec_of(doc):
    """(pod template metadata, pod spec) of a workload."""
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return doc.get("metadata") or {}, spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    template = spec.get("template") or {}
    return template.get("metadata") or {}, template.get("spec") or {}


def image_pinned(image):
    if not image:
        return False
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    return last.rsplit(":", 1)[1] not in ("", "latest")


def check_container(where, c, pod_sc, needs_probes, problems):
    name = f"{where} container {c.get('name')}"
    limits = (c.get("resources") or {}).get("limits") or {}
    for r in ("cpu", "memory"):
        if r not in limits:
            problems.append(f"{name}: no resources.limits.{r}")
    sc = c.get("securityContext") or {}
    if not (sc.get("runAsNonRoot") is True or (pod_sc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is not False)):
        problems.append(f"{name}: runAsNonRoot is not true")
    if sc.get("runAsUser") == 0 or (sc.get("runAsUser") is None and pod_sc.get("runAsUser") == 0):
        problems.append(f"{name}: runs as uid 0")
    if sc.get("privileged"):
        problems.append(f"{name}: privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{name}: allowPrivilegeEscalation is not false")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        problems.append(f"{name}: capabilities.drop does not contain ALL")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{name}: readOnlyRootFilesystem is not true")
    if needs_probes:
        for p in ("livenessProbe", "readinessProbe"):
            if not c.get(p):
                problems.append(f"{name}: no {p}")
    if not image_pinned(c.get("image")):
        problems.append(f"{name}: image {c.get('image')!r} is not pinned (tag other than latest, or digest)")


def check_workload(doc, problems):
    kind = doc["kind"]
    where = f"{kind}/{(doc.get('metadata') or {}).get('name')}"
    _, pod = pod_spec_of(doc)
    pod_sc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{where}: {flag} is set")
    for v in pod.get("volumes") or []:
        if "hostPath" in v:
            problems.append(f"{where}: volume {v.get('name')} uses hostPath")
    containers = pod.get("containers") or []
    if not containers:
        problems.append(f"{where}: no containers")
    for c in containers:
        check_container(where, c, pod_sc, kind not in RUN_TO_COMPLETION, problems)
    for c in pod.get("initContainers") or []:
        sidecar = c.get("restartPolicy") == "Always"
        check_container(where + (" sidecar" if sidecar else " init"), c, pod_sc, sidecar, problems)
    return len(containers) + len(pod.get("initContainers") or [])


def selects(selector, labels):
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


def port_names(pod):
    names = set()
    for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        for p in c.get("ports") or []:
            if p.get("name"):
                names.add(p["name"])
    return names


def check_references(docs, problems):
    pods = [(d, *pod_spec_of(d)) for d in docs if d.get("kind") in WORKLOADS]
    for d in docs:
        kind = d.get("kind")
        where = f"{kind}/{(d.get('metadata') or {}).get('name')}"
        spec = d.get("spec") or {}
        if kind == "Service" and spec.get("selector"):
            sel, wanted = spec["selector"], {p.get("targetPort") for p in spec.get("ports") or []}
        elif kind == "PodDisruptionBudget":
            sel, wanted = (spec.get("selector") or {}).get("matchLabels"), set()
        elif kind == "PodMonitor":
            sel = (spec.get("selector") or {}).get("matchLabels")
            wanted = {e.get("port") for e in spec.get("podMetricsEndpoints") or []}
        else:
            continue
        matched = [(w, meta, pod) for w, meta, pod in pods if selects(sel, meta.get("labels") or {})]
        if not matched:
            problems.append(f"{where}: selector {sel} matches no pod template in this file")
            continue
        for port in wanted:
            if isinstance(port, str) and not any(port in port_names(pod) for _, _, pod in matched):
                problems.append(f"{where}: named port {port!r} not found in the selected pods")


def check_certificate(doc, problems):
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    where = f"Certificate/{meta.get('name')}"
    if spec.get("isCA"):
        return
    usages = set(spec.get("usages") or [])
    for u in ("server auth", "client auth"):
        if u not in usages:
            problems.append(f"{where}: usages lack {u!r}")
    if spec.get("secretName") == "redis-tls":
        ns = meta.get("namespace")
        if not ns:
            problems.append(f"{where}: no metadata.namespace (the dnsNames depend on it)")
            return
        names = set(spec.get("dnsNames") or [])
        for n in (f"redis-headless.{ns}.svc", f"slotmux.{ns}.svc"):
            if n not in names:
                problems.append(f"{where}: dnsNames lack {n!r}")


def main(paths):
    problems, containers, objects = [], 0, 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        flat = []
        for d in docs:
            flat.extend(d.get("items") or [] if d.get("kind") == "List" else [d])
        before = len(problems)
        for d in flat:
            objects += 1
            if d.get("kind") in WORKLOADS:
                containers += check_workload(d, problems)
            elif d.get("kind") == "Certificate" and str(d.get("apiVersion", "")).startswith("cert-manager.io/"):
                check_certificate(d, problems)
        check_references(flat, problems)
        for p in problems[before:]:
            print(f"POLICY FAIL {path}: {p}")
        if len(problems) == before:
            print(f"policy ok   {path}: {len(flat)} objects")
    print(f"policy_check: {objects} objects, {containers} containers, {len(problems)} violation(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
