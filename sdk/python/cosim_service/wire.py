"""The wire format of the cosim protocol: canonical JSON, one message per line, strictly decoded.

This is THE canonical encoder of cosim: the coordinator writes its messages and its trace records with it, the
service SDK its replies and the MQTT client its envelopes. Canonical means sorted keys, no spaces, UTF-8 kept as
it is (not ``\\u``-escaped) and no NaN/Infinity (refused with ValueError: JSON cannot carry them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["DecodeError", "canonical", "decode", "encode", "parse_line"]

# Built once: json.dumps/json.loads with options construct a new encoder/decoder on every call (a hot path).
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

# The C encoder behind _ENCODER, built once: JSONEncoder.encode builds a new one on every call, which costs more
# than encoding a small payload. Same options, same bytes; no circular-reference markers (a cycle is a
# RecursionError, reported like NaN).
# (json.encoder.c_make_encoder is CPython's, absent from the type stubs.)
_C_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODE = (_C_MAKE_ENCODER(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", True, False, False)
             if _C_MAKE_ENCODER is not None else None)


def canonical(value: Any) -> str:
    """Canonical JSON text of ``value`` (no newline): sorted keys, no spaces, UTF-8 kept, NaN/Infinity refused."""
    if _C_ENCODE is None or isinstance(value, str):
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))


def encode(message: Mapping[str, Any]) -> str:
    """One protocol line: the canonical JSON of ``message``, newline-terminated."""
    return canonical(message) + "\n"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_INFINITIES = (float("inf"), float("-inf"))


def _finite_float(text: str) -> float:
    value = float(text)
    if value in _INFINITIES:  # e.g. 1E400: valid syntax, but no JSON encoder can write it back
        raise ValueError(f"{text} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def decode(line: bytes) -> Any:
    """Strict JSON from UTF-8 bytes: NaN, Infinity and numbers out of a float's range are refused (ValueError)."""
    return _DECODER.decode(line.decode("utf-8"))


class DecodeError(ValueError):
    """A line that is not one strict JSON value; the message says why, in one line."""


def parse_line(raw: bytes | str) -> Any:
    """One received line (bytes: strict UTF-8) as a JSON value, strictly; DecodeError says what is wrong."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"line is not UTF-8 (byte {exc.start})") from None
    try:
        return _DECODER.decode(raw)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"line is not JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:  # NaN, Infinity, 1E400
        raise DecodeError(f"line is not strict JSON ({exc})") from None
