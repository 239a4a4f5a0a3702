"""Scenario -> stack file for `docker stack deploy`: cosim's compose file (cosim.compose) plus a `deploy:`
section per service, minus what Swarm does not take.

- one replica per cosim node (replicas are already distinct nodes), restart condition ``none`` (a service that
  dies ends the run, as it does under Compose), the node's ``placement`` constraints, and ``endpoint_mode:
  dnsrr``: a service name resolves to its task's own address (the virtual IP mode needs IPVS, which not every
  kernel has);
- the node's `resources` as ``deploy.resources.limits`` (cpus, memory) instead of compose's top-level keys;
- cosim's labels on the services too (``deploy.labels``), so ``invoke down`` finds a stack by them;
- an overlay network, still internal;
- ``build``/``pull_policy`` (images are built before, and copied or pushed to the nodes), ``restart`` (replaced
  by the restart policy) and ``security_opt`` (stack deploy drops it: cosim's cluster engines set
  no-new-privileges daemon-wide instead, see docs/swarm.md) are left out rather than dropped with a warning.

Per-run values stay variables (``${COSIM_RUN_ID}``), given to `docker stack deploy` at deploy time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cosim import compose
from cosim.model import Scenario

STACK_FILE_VERSION = "3.8"  # init, tmpfs, stdin_open, cap_drop in a stack need >= 3.7
UNSUPPORTED = ("build", "pull_policy", "restart", "security_opt")


def stack_spec(scenario: Scenario, images: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The stack file as a dict; ``images`` maps an image tag to the reference the nodes use (a registry's)."""
    spec = compose.compose_spec(scenario)
    spec.pop("name")  # a stack is named at deploy time
    for node in scenario.containers:
        service = spec["services"][node.id]
        for key in UNSUPPORTED:
            service.pop(key, None)
        if images and node.image in images:
            service["image"] = compose.literal(images[node.image])
        deploy: dict[str, Any] = {
            "mode": "replicated",
            "replicas": 1,
            "endpoint_mode": "dnsrr",
            "restart_policy": {"condition": "none"},
            "labels": compose.labels(scenario, node.id),
        }
        if node.placement:
            deploy["placement"] = {"constraints": [compose.literal(c) for c in node.placement]}
        limits = {key: service.pop(key) for key in compose.LIMIT_KEYS if key in service}
        if limits:  # a stack takes them in `deploy` (no swap limit: a Swarm task's swap is the engine's default)
            deploy["resources"] = {"limits": {
                **({"cpus": str(limits["cpus"])} if "cpus" in limits else {}),
                **({"memory": limits["mem_limit"]} if "mem_limit" in limits else {})}}
        service["deploy"] = deploy
    spec["networks"][compose.NETWORK]["driver"] = "overlay"
    return {"version": STACK_FILE_VERSION, **spec}


def render(scenario: Scenario, path: Path, images: Mapping[str, str] | None = None) -> Path:
    """Write the stack file for one run to ``path`` (beside the run's logs)."""
    header = f"# Stack file rendered by cosim from scenario {scenario.name!r} for `docker stack deploy`.\n"
    body = yaml.safe_dump(stack_spec(scenario, images), sort_keys=False, default_flow_style=False, width=120)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + body, encoding="utf-8")
    return path
