"""The core of a run: the window loop (cosim.coordinator) and the parts it calls, one job each.

- ``contracts``: the typed values that flow between the parts (events, inputs, pending deliveries).
- ``slots``: one record of state per node (``NodeSlot``), from which a checkpoint's per-node state is derived.
- ``deliveries``: the events on links (due now: handed over; emitted: numbered, routed, sent on their links).
- ``advance``: the advance policy (``fixed`` / ``next-event``): which window comes next, which nodes it advances,
  and the promises a next-event node is held to.
- ``barriers``: barrier groups (members advanced together, their peers named in ADVANCE).
- ``lookahead``: services nothing sends to, sent their next ADVANCE early.
- ``actions``: the scenario's schedule carried out (reconfigure, links, partitions, crash and restart).
- ``checkpoints``: where to checkpoint, and the run's state in and out of one.
"""
