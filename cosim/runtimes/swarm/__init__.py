"""The Swarm runtime and its local test cluster, one module per idea:

- ``runtime``: SwarmRuntime (stack deploy, wait for the tasks, attach through each node's engine, teardown),
  ``invoke down`` for stacks;
- ``stack``: the stack file (cosim's compose file plus ``deploy:`` sections);
- ``nodes``: which Docker engine (context) serves which Swarm node, and whether it answers;
- ``images``: the images on every node (``docker save | docker load`` once per image id, or a registry);
- ``cluster``: extra dockerd instances in namespaces of their own, the local test cluster (`invoke cluster`).
"""

from cosim.runtimes.swarm.cluster import cluster_down, cluster_up
from cosim.runtimes.swarm.nodes import CONTEXT_ENV
from cosim.runtimes.swarm.runtime import SwarmRuntime, down_stacks

__all__ = ["CONTEXT_ENV", "SwarmRuntime", "cluster_down", "cluster_up", "down_stacks"]
