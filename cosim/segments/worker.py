"""The ns-3 segment worker: ``python -m cosim.segments.worker``, the only process that ever loads ns-3.

ns-3 (the ``ns3`` package, GPL-2.0-only) is an optional extra, ``cosim[ns3]``, and runs here, in its own process
behind a pipe, never in cosim's own. The coordinator speaks JSON lines on stdin/stdout (docs/segments-worker.md):

    -> {"op":"init","seed":S,"segments":[...]}        <- {"op":"ready","ns3":"3.44","modules":[...],"segments":[...]}
    -> {"op":"run","until_us":T,"sends":[[pid, time_us, segment, src, dst, size_bytes], ...]}
    <- {"op":"ran","now_us":T,"arrivals":[[pid, at_us], ...],"drops":[[pid, at_us, reason], ...],"next_us":E}
    -> {"op":"shutdown"}                                (exit 0)
    <- {"op":"error","message":"one line"}              (then exit 1)

A window ``run until_us=T`` executes every ns-3 event strictly before T us; an arrival or drop at t ns is reported
at ``t // 1000 + 1`` us, the first microsecond strictly after it, so it always falls in (previous T, T] and a send
at exactly T (allowed in the next ``run``) is never in ns-3's past. Only the modules the segments' media need are
loaded (all of ns-3 costs ~18 s of CPU and 630 MB per process).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import IO, Any

from cosim.segments import ns3_sources
from cosim.segments.media import (
    BASE_LIBRARIES,
    MEDIUM_LIBRARIES,
    WIFI_STANDARDS,
    Segment,
    SegmentError,
    control_mode,
    parse_segments,
)

NS3_VERSION = "3.44"
UINT64 = 2**64


class ProtocolError(ValueError):
    """A request the worker cannot carry out; the message is the one line of the error reply."""


class Ns3:
    """ns-3 inside this process: the libraries loaded so far and the C++ compiled for them."""

    def __init__(self) -> None:
        spec = importlib.util.find_spec("ns3")
        if spec is None or not spec.submodule_search_locations:
            raise ProtocolError("the ns3 package is not installed: pip install 'cosim[ns3]' (or ./inv installs it)")
        root = Path(list(spec.submodule_search_locations)[0])
        lib = next((root / d for d in ("lib64", "lib") if (root / d / f"libns{NS3_VERSION}-core.so").exists()), None)
        if lib is None:
            raise ProtocolError(f"the ns3 package at {root} has no libns{NS3_VERSION}-core.so (expected ns3=={NS3_VERSION}.*)")
        self.lib = lib
        import cppyy  # the bindings' C++ interpreter: only this process loads it

        # An ns-3 fatal error aborts the process: with the default handlers back, it ends with ns-3's own message
        # as its last lines, not with seconds of gdb back trace from cppyy's handler.
        for signum in (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE):
            signal.signal(signum, signal.SIG_DFL)
        self.cppyy = cppyy
        cppyy.add_include_path(str(root / "include"))
        cppyy.add_library_path(str(self.lib))
        self.modules: list[str] = []
        self.compiled: set[str] = set()

    def load(self, module: str) -> None:
        """Loads one ns-3 library after the ns-3 libraries it links to."""
        if module in self.modules:
            return
        data = (self.lib / f"libns{NS3_VERSION}-{module}.so").read_bytes()
        for dependency in re.findall(rb"\x00libns" + re.escape(NS3_VERSION.encode()) + rb"-([a-z0-9-]+)\.so\x00", data):
            if dependency.decode() != module:
                self.load(dependency.decode())
        self.cppyy.load_library(str(self.lib / f"libns{NS3_VERSION}-{module}.so"))
        self.modules.append(module)

    def compile(self, name: str) -> None:
        if name not in self.compiled:
            if not self.cppyy.cppdef(getattr(ns3_sources, name.upper())):
                raise ProtocolError(f"the worker's C++ for {name} did not compile (see the worker's stderr)")
            self.compiled.add(name)
            if name == "core":
                self.cppyy.gbl.cosimns.Setup()

    def prepare(self, media: set[str]) -> None:
        for module in BASE_LIBRARIES + [m for medium in sorted(media) for m in MEDIUM_LIBRARIES[medium]]:
            self.load(module)
        self.compile("core")
        if media & {"csma", "p2p"}:
            self.compile("wired")
        if media & {"lrwpan", "wifi"}:
            self.compile("radio")
        for medium in sorted(media):
            self.compile(medium)


class Worker:
    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.ns3: Ns3 | None = None
        self.segments: dict[str, Segment] = {}
        self.endpoints: dict[tuple[str, str], int] = {}
        self.now_us = 0
        self.initialised = False

    def reply(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message, separators=(",", ":")) + "\n")
        self.out.flush()

    def handle(self, request: Any) -> bool:
        """Answers one request; False when the worker should exit."""
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise ProtocolError(f"expected an object with an op, not {str(request)[:80]}")
        op = request["op"]
        if op == "init":
            self.init(request)
        elif op == "run":
            if not self.initialised:
                raise ProtocolError("run before init")
            self.run(request)
        elif op == "shutdown":
            return False
        else:
            raise ProtocolError(f"unknown op {op!r} (expected init, run or shutdown)")
        return True

    def init(self, request: dict[str, Any]) -> None:
        seed = request.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ProtocolError(f"init: seed must be an integer, not {seed!r}")
        try:
            segments = parse_segments(request.get("segments"))
        except SegmentError as error:
            raise ProtocolError(f"init: {error}") from None
        if self.ns3 is None:
            self.ns3 = Ns3()
        self.ns3.prepare({s.medium for s in segments})
        gbl = self.ns3.cppyy.gbl
        # Seed 1..2^31-2 from the scenario's seed, run number 1: every stream is then fixed by AssignStreams.
        gbl.cosimns.Reset(1 + seed % 2147483646)
        if "lrwpan" in self.ns3.compiled:
            gbl.cosimns.ResetLrWpan()
        self.segments = {s.id: s for s in segments}
        self.endpoints = {}
        self.now_us = 0
        for segment in segments:
            first = self.build(segment)
            for offset, node in enumerate(segment.nodes):
                self.endpoints[(segment.id, node)] = first + offset
        self.initialised = True
        self.reply({"op": "ready", "ns3": NS3_VERSION, "modules": list(self.ns3.modules),
                    "segments": [{"id": s.id, "nodes": s.nodes} for s in segments]})

    def build(self, segment: Segment) -> int:
        assert self.ns3 is not None
        cosimns = self.ns3.cppyy.gbl.cosimns
        s = segment.settings
        if segment.medium in ("csma", "p2p"):
            delay_ns = round(float(s["delay_us"]) * 1000)
            rate = str(s["data_rate"])
            if segment.medium == "csma":
                return int(cosimns.BuildCsma(segment.index, len(segment.nodes), rate, delay_ns, s["queue_packets"]))
            return int(cosimns.BuildP2p(segment.index, rate, delay_ns, s["queue_packets"]))
        xyz = self.ns3.cppyy.gbl.std.vector["double"]([c for p in segment.positions for c in p])
        if segment.medium == "lrwpan":
            return int(cosimns.BuildLrWpan(segment.index, xyz, s["propagation"], float(s["range_m"]),
                                           float(s["tx_power_dbm"])))
        standard, band, _, _ = WIFI_STANDARDS[s["standard"]]
        data_mode = s.get("data_mode", "")
        return int(cosimns.BuildWifi(segment.index, xyz, s["propagation"], float(s["range_m"]),
                                     float(s["tx_power_dbm"]), standard, band, s["rate_manager"], data_mode,
                                     control_mode(s["standard"], data_mode) if data_mode else "", s["mode"] == "ap"))

    def run(self, request: dict[str, Any]) -> None:
        assert self.ns3 is not None
        until = request.get("until_us")
        if isinstance(until, bool) or not isinstance(until, int) or until < self.now_us:
            raise ProtocolError(f"run: until_us must be an integer >= the worker's time {self.now_us}, not {until!r}")
        sends = request.get("sends", [])
        if not isinstance(sends, list):
            raise ProtocolError(f"run: sends must be a list, not {str(sends)[:80]}")
        cosimns = self.ns3.cppyy.gbl.cosimns
        checked: list[tuple[int, int, int, int, int]] = []
        batch: set[int] = set()
        previous = (-1, -1)
        for send in sends:
            pid, time_us, src, dst, size = self.check_send(send)
            if pid in batch:
                raise ProtocolError(f"run: pid {pid} is sent twice (pids are unique in a run)")
            if (time_us, pid) < previous:
                raise ProtocolError(f"run: sends must be sorted by (time_us, pid); pid {pid} comes too late")
            previous = (time_us, pid)
            batch.add(pid)
            checked.append((pid, time_us, src, dst, size))
        # Only now, all checked: a bad send leaves nothing half-scheduled (the worker stops at the error anyway).
        for pid, time_us, src, dst, size in checked:
            if not cosimns.Send(pid, time_us * 1000, src, dst, size):
                raise ProtocolError(f"run: send {pid}: {cosimns.g_error}")
        next_ns = int(cosimns.RunUntil(until * 1000))
        self.now_us = until
        # An event at t ns is reported at the first whole microsecond strictly after it (module docstring). Most
        # windows have nothing to report: the result vectors are only read (through cppyy, slowly) when they hold any.
        arrivals: list[list[Any]] = []
        drops: list[list[Any]] = []
        if cosimns.g_arrPid.size():
            arrivals = [[int(pid), int(ns) // 1000 + 1] for pid, ns in zip(cosimns.g_arrPid, cosimns.g_arrNs)]
            arrivals.sort(key=lambda a: (a[1], a[0]))
        if cosimns.g_dropPid.size():
            drops = [[int(pid), int(ns) // 1000 + 1, str(reason)]
                     for pid, ns, reason in zip(cosimns.g_dropPid, cosimns.g_dropNs, cosimns.g_dropReason)]
            drops.sort(key=lambda d: (d[1], d[0]))
        if arrivals or drops:
            cosimns.ClearResults()
        self.reply({"op": "ran", "now_us": until, "arrivals": arrivals, "drops": drops,
                    "next_us": None if next_ns < 0 else next_ns // 1000})

    def check_send(self, send: Any) -> tuple[int, int, int, int, int]:
        """One send checked against the segments: (pid, time_us, source endpoint, destination endpoint, size)."""
        if not isinstance(send, list) or len(send) != 6:
            raise ProtocolError(f"run: a send is [pid, time_us, segment, src, dst, size_bytes], not {str(send)[:80]}")
        pid, time_us, seg_id, src, dst, size = send
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < UINT64:
            raise ProtocolError(f"run: pid must be a non-negative integer, not {pid!r}")
        if isinstance(time_us, bool) or not isinstance(time_us, int) or time_us < self.now_us:
            raise ProtocolError(f"run: send {pid}: time_us must be an integer >= the worker's time {self.now_us}, "
                                f"not {time_us!r}")
        segment = self.segments.get(seg_id) if isinstance(seg_id, str) else None
        if segment is None:
            raise ProtocolError(f"run: send {pid}: no segment {seg_id!r} (segments: {', '.join(self.segments)})")
        for role, node in (("src", src), ("dst", dst)):
            if (seg_id, node) not in self.endpoints:
                raise ProtocolError(f"run: send {pid}: {role} {node!r} is not a node of segment {seg_id!r}")
        if src == dst:
            raise ProtocolError(f"run: send {pid}: src and dst are both {src!r}")
        limit = 65507 if segment.medium != "lrwpan" else 65527  # the largest UDP payload over IPv4 / IPv6
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= limit:
            raise ProtocolError(f"run: send {pid}: size_bytes must be an integer from 1 to {limit}, not {size!r}")
        return pid, time_us, self.endpoints[(seg_id, src)], self.endpoints[(seg_id, dst)], size


def main() -> int:
    # The coordinator owns the worker's lifetime: a Ctrl-C reaching the whole process group is its to handle (it
    # sends shutdown, or closes the pipe: end of input ends the worker with 0).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol owns the real stdout; anything else that writes to fd 1 (ns-3, cling) goes to stderr instead.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    worker = Worker(protocol)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as error:
            worker.reply({"op": "error", "message": f"not a JSON line: {error}"})
            return 1
        try:
            if not worker.handle(request):
                return 0
        except ProtocolError as error:
            worker.reply({"op": "error", "message": str(error)})
            return 1
        except Exception as error:  # noqa: BLE001  # anything else still ends with the one error line
            worker.reply({"op": "error", "message": f"{type(error).__name__}: {error}".replace("\n", " ")[:300]})
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
