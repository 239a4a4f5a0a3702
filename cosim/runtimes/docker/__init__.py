"""The Docker runtime and everything it needs from the engine, one module per idea:

- ``runtime``: DockerRuntime (compose project up, attach, teardown), run locks, reaping, ``invoke down``;
- ``attach``: the engine's attach endpoint as a Transport (no ``docker attach`` process per service);
- ``engine``: the boundary with the Docker CLI (engine check, python-on-whales errors, the calls it lacks);
- ``api``: the engine's HTTP API on its unix socket for what a run asks many times (container state, image ids,
  the run's containers in one listing), with one batched `docker inspect` for engines without a socket;
- ``base_image``: the image every service image builds on (pulled, or debootstrapped for engines without a
  registry);
- ``service_images``: the service images (wheelhouse, build hash, build only when something changed).

The compose file itself is rendered by cosim.compose: its hash identifies every run (local ones too).
"""

from cosim.runtimes.docker.runtime import DockerRuntime, down_all, image_specs, prepare_images, remove_by_label

__all__ = ["DockerRuntime", "down_all", "image_specs", "prepare_images", "remove_by_label"]
