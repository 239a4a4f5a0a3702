"""Seeds derived from the scenario seed by SHA-256 of stable names.

Never Python's hash() (salted per process), and never one shared generator: each node and each link has its
own, so adding a node does not change the random draws of unrelated links.
"""

from __future__ import annotations

import hashlib

SEED_BITS = 53  # every JSON parser reads integers below 2**53 exactly (JavaScript numbers, jq)


def derive_seed(root: int, *names: str) -> int:
    """A 53-bit seed for the thing called ``names`` in a scenario seeded with ``root``."""
    material = "\x1f".join(("cosim-seed-v1", str(root), *names)).encode("utf-8")
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") >> (64 - SEED_BITS)


def node_seed(root: int, node_id: str) -> int:
    return derive_seed(root, "node", node_id)


def link_seed(root: int, source: str, target: str) -> int:
    return derive_seed(root, "link", source, target)
