"""The segment settings the ns-3 worker accepts, checked and completed before ns-3 sees them.

ns-3 aborts the whole process on a bad value (an unknown data rate unit, a WiFi mode its standard lacks), so every
value is checked here first and a bad one becomes one line naming the segment and the field. Pure Python: it imports
nothing from ns-3 (the worker does, after this check).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

MEDIA = ("csma", "p2p", "wifi", "lrwpan")
PROPAGATION = ("log-distance", "friis", "range")
# ns-3's DataRate units this worker accepts (bits per second, SI prefixes): "100Mbps", "250kbps", "1Gb/s".
DATA_RATE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(bps|b/s|kbps|kb/s|Kbps|Kb/s|Mbps|Mb/s|Gbps|Gb/s)$")
RATE_FACTOR = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}

# WiFi standards: ns-3's WifiStandard, its band, and the data modes a constant rate manager may use.
OFDM = [f"OfdmRate{r}Mbps" for r in ("6", "9", "12", "18", "24", "36", "48", "54")]
ERP = [f"Erp{m}" for m in OFDM]
DSSS = ["DsssRate1Mbps", "DsssRate2Mbps", "DsssRate5_5Mbps", "DsssRate11Mbps"]
HT = [f"HtMcs{i}" for i in range(8)]
VHT = [f"VhtMcs{i}" for i in range(10)]
HE = [f"HeMcs{i}" for i in range(12)]
WIFI_STANDARDS: dict[str, tuple[str, str, list[str], str]] = {
    # name: (ns-3 standard, band, the modes a constant rate manager may use (its own and the older ones its PHY
    # keeps), the lowest: what the default data_mode, OfdmRate6Mbps, means on a 2.4 GHz band)
    "802.11a": ("WIFI_STANDARD_80211a", "5GHz", OFDM, "OfdmRate6Mbps"),
    "802.11b": ("WIFI_STANDARD_80211b", "2_4GHz", DSSS, "DsssRate1Mbps"),
    "802.11g": ("WIFI_STANDARD_80211g", "2_4GHz", ERP + DSSS, "ErpOfdmRate6Mbps"),
    "802.11n-2.4GHz": ("WIFI_STANDARD_80211n", "2_4GHz", HT + ERP + DSSS, "ErpOfdmRate6Mbps"),
    "802.11n-5GHz": ("WIFI_STANDARD_80211n", "5GHz", HT + OFDM, "OfdmRate6Mbps"),
    "802.11ac": ("WIFI_STANDARD_80211ac", "5GHz", VHT + HT + OFDM, "OfdmRate6Mbps"),
    "802.11ax-5GHz": ("WIFI_STANDARD_80211ax", "5GHz", HE + VHT + HT + OFDM, "OfdmRate6Mbps"),
}
DEFAULT_DATA_MODE = "OfdmRate6Mbps"


def control_mode(standard: str, data_mode: str) -> str:
    """The rate of control frames (ACK, RTS/CTS): the data rate when it is a legacy one, else the band's lowest
    OFDM rate (HT, VHT and HE stations acknowledge at non-HT rates)."""
    if data_mode in OFDM or data_mode in ERP or data_mode in DSSS:
        return data_mode
    return "OfdmRate6Mbps" if WIFI_STANDARDS[standard][1] == "5GHz" else "ErpOfdmRate6Mbps"
RATE_MANAGERS = ("constant", "ideal", "minstrel")
WIFI_MODES = ("ap", "adhoc")

COMMON_KEYS = {"id", "medium", "nodes"}
RADIO_KEYS = {"propagation", "positions", "distance_m", "range_m", "tx_power_dbm"}
KEYS = {
    "csma": COMMON_KEYS | {"data_rate", "delay_us", "queue_packets"},
    "p2p": COMMON_KEYS | {"data_rate", "delay_us", "queue_packets"},
    "lrwpan": COMMON_KEYS | RADIO_KEYS,
    "wifi": COMMON_KEYS | RADIO_KEYS | {"standard", "rate_manager", "data_mode", "mode"},
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "csma": {"data_rate": "100Mbps", "delay_us": 2, "queue_packets": 100},
    "p2p": {"data_rate": "10Mbps", "delay_us": 1000, "queue_packets": 100},
    "lrwpan": {"propagation": "log-distance", "tx_power_dbm": 0, "distance_m": 10, "range_m": 250},
    "wifi": {"propagation": "log-distance", "tx_power_dbm": 16.0206, "distance_m": 10, "range_m": 250,
             "standard": "802.11a", "rate_manager": "constant", "mode": "ap"},
}
MAX_NODES = 65533  # 802.15.4 short addresses, and more than any segment here needs
MAX_SEGMENTS = 255  # segment k is the IPv4 network 10.k.0.0/16


class SegmentError(ValueError):
    """A segment the worker cannot build; the message is the one line the coordinator shows."""


@dataclass(frozen=True)
class Segment:
    index: int
    id: str
    medium: str
    nodes: list[str]
    settings: dict[str, Any]
    positions: list[tuple[float, float, float]] = field(default_factory=list)

    def data_rate_bps(self) -> float:
        match = DATA_RATE.match(str(self.settings["data_rate"]))
        assert match is not None  # checked by parse_segment
        return float(match.group(1)) * RATE_FACTOR[match.group(2)[0] if match.group(2)[0] in "kKMG" else ""]


def _number(where: str, name: str, value: Any, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SegmentError(f"{where}: {name} must be a number, not {value!r}")
    if minimum is not None and value < minimum:
        raise SegmentError(f"{where}: {name} must be at least {minimum:g}, not {value!r}")
    return float(value)


def _choice(where: str, name: str, value: Any, choices: tuple[str, ...] | list[str]) -> str:
    if value not in choices:
        raise SegmentError(f"{where}: {name} must be one of {', '.join(choices)}, not {value!r}")
    return str(value)


def parse_segment(index: int, raw: Any) -> Segment:
    """Checks one segment of an `init` and fills in the defaults it leaves out."""
    where = f"segment {index + 1}"
    if not isinstance(raw, dict):
        raise SegmentError(f"{where}: expected an object with id, medium and nodes, not {raw!r}")
    seg_id = raw.get("id")
    if not isinstance(seg_id, str) or not seg_id:
        raise SegmentError(f"{where}: id must be a non-empty string, not {seg_id!r}")
    where = f"segment {seg_id!r}"
    medium = _choice(where, "medium", raw.get("medium"), MEDIA)
    unknown = sorted(set(raw) - KEYS[medium])
    if unknown:
        raise SegmentError(f"{where}: unknown field {unknown[0]!r} for medium {medium} "
                           f"(expected {', '.join(sorted(KEYS[medium]))})")
    nodes = raw.get("nodes")
    if not isinstance(nodes, list) or not all(isinstance(n, str) and n for n in nodes):
        raise SegmentError(f"{where}: nodes must be a list of node ids, not {nodes!r}")
    if len(set(nodes)) != len(nodes):
        duplicate = next(n for n in nodes if nodes.count(n) > 1)
        raise SegmentError(f"{where}: node {duplicate!r} is listed twice in nodes")
    if medium == "p2p" and len(nodes) != 2:
        raise SegmentError(f"{where}: a p2p segment has exactly 2 nodes, not {len(nodes)}")
    if not 2 <= len(nodes) <= MAX_NODES:
        raise SegmentError(f"{where}: nodes must list 2 to {MAX_NODES} nodes, not {len(nodes)}")
    settings = {**DEFAULTS[medium], **{k: v for k, v in raw.items() if k not in COMMON_KEYS}}
    positions: list[tuple[float, float, float]] = []
    if medium in ("csma", "p2p"):
        if not isinstance(settings["data_rate"], str) or not DATA_RATE.match(settings["data_rate"]):
            raise SegmentError(f"{where}: data_rate must look like \"100Mbps\" (bps, kbps, Mbps or Gbps), "
                               f"not {settings['data_rate']!r}")
        _number(where, "delay_us", settings["delay_us"], 0)
        queue = settings["queue_packets"]
        if isinstance(queue, bool) or not isinstance(queue, int) or queue < 1:
            raise SegmentError(f"{where}: queue_packets must be a whole number of at least 1, not {queue!r}")
        segment = Segment(index, seg_id, medium, list(nodes), settings)
        if segment.data_rate_bps() < 1:
            raise SegmentError(f"{where}: data_rate must be at least 1bps, not {settings['data_rate']!r}")
        return segment
    _choice(where, "propagation", settings["propagation"], PROPAGATION)
    _number(where, "tx_power_dbm", settings["tx_power_dbm"])
    _number(where, "range_m", settings["range_m"], 0)
    positions = _positions(where, nodes, settings)
    if medium == "wifi":
        standard = _choice(where, "standard", settings["standard"], list(WIFI_STANDARDS))
        _choice(where, "rate_manager", settings["rate_manager"], RATE_MANAGERS)
        _choice(where, "mode", settings["mode"], WIFI_MODES)
        modes = WIFI_STANDARDS[standard][2]
        if settings["rate_manager"] == "constant":
            # OfdmRateXMbps (the default is OfdmRate6Mbps) on 2.4 GHz: the same rate as the band has it (ERP-OFDM),
            # or on 802.11b, which has no OFDM, its lowest rate.
            mode = settings.get("data_mode", DEFAULT_DATA_MODE)
            if mode in OFDM and mode not in modes:
                mode = f"Erp{mode}" if f"Erp{mode}" in modes else WIFI_STANDARDS[standard][3]
            settings["data_mode"] = _choice(where, f"data_mode (for {standard})", mode, modes)
        else:
            settings.pop("data_mode", None)  # filled in by default, it only applies to the constant manager
    return Segment(index, seg_id, medium, list(nodes), settings, positions)


def _positions(where: str, nodes: list[str], settings: dict[str, Any]) -> list[tuple[float, float, float]]:
    raw = settings.get("positions")
    if raw is None:
        # Every node on a circle around the first one (the gateway, access point or PAN coordinator).
        radius = _number(where, "distance_m", settings["distance_m"], 0)
        others = len(nodes) - 1
        return [(0.0, 0.0, 0.0)] + [
            (radius * math.cos(2 * math.pi * i / others), radius * math.sin(2 * math.pi * i / others), 0.0)
            for i in range(others)]
    if not isinstance(raw, dict):
        raise SegmentError(f"{where}: positions must map node ids to [x, y, z] in metres, not {raw!r}")
    extra = sorted(set(raw) - set(nodes))
    if extra:
        raise SegmentError(f"{where}: positions names {extra[0]!r}, which is not one of the segment's nodes")
    missing = [n for n in nodes if n not in raw]
    if missing:
        raise SegmentError(f"{where}: positions has no [x, y, z] for node {missing[0]!r}")
    out = []
    for node in nodes:
        xyz = raw[node]
        if not isinstance(xyz, list) or len(xyz) != 3:
            raise SegmentError(f"{where}: positions.{node} must be [x, y, z] in metres, not {xyz!r}")
        out.append(tuple(_number(where, f"positions.{node}", v) for v in xyz))
    return out  # type: ignore[return-value]  # three floats each, checked above


def parse_segments(raw: Any) -> list[Segment]:
    if not isinstance(raw, list) or not raw:
        raise SegmentError(f"segments must be a non-empty list, not {raw!r}")
    if len(raw) > MAX_SEGMENTS:
        raise SegmentError(f"at most {MAX_SEGMENTS} segments, not {len(raw)}")
    segments = [parse_segment(i, s) for i, s in enumerate(raw)]
    seen: set[str] = set()
    for segment in segments:
        if segment.id in seen:
            raise SegmentError(f"segment id {segment.id!r} is used twice")
        seen.add(segment.id)
    return segments


# The ns-3 libraries (without the libns3.44- prefix) each medium's builder calls into; their dependencies are
# loaded first, found in the libraries themselves.
MEDIUM_LIBRARIES = {
    "csma": ["csma"],
    "p2p": ["point-to-point"],
    "lrwpan": ["mobility", "propagation", "spectrum", "lr-wpan", "sixlowpan"],
    "wifi": ["mobility", "propagation", "wifi"],
}
BASE_LIBRARIES = ["core", "network", "traffic-control", "internet"]
