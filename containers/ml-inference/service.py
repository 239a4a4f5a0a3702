"""ml-inference: classify vibration feature windows with an ONNX model, in virtual time.

Consumes ``inference_request`` events (data: {"sensor", "window", "sampled_us", "features": [rms, peak,
crest, kurtosis]}) and ``mqtt_received`` events whose data["payload"] is such a request (requests that came
through the MQTT gateway). Emits one ``inference_result`` per request (data: sensor, window, sampled_us,
label "anomaly"|"normal", score rounded to 6 decimals, model_sha256), stamped at the request's time plus
``processing_delay_us``; a request it cannot read gets an ``inference_error`` naming the problem instead.
Other event types are counted and ignored.

Config (all optional):
  model_path:           the ONNX model; a relative path is taken beside this file, where the image has model.onnx
                        (the default) and model-mild.onnx (trained on milder faults too; see train_model.py)
  threshold:            score above which a window is an anomaly (default 0.5)
  processing_delay_us:  modelled compute time added to each result's timestamp (default 0)

All three can change during a run (the schedule's `reconfigure`, protocol CONFIGURE): for requests from then on.

Inference runs one request at a time on one thread (CPUExecutionProvider, sequential), so a request's score
does not depend on what else arrived in its window. Wall-clock latency is measured as a metric only and
reported on stderr at shutdown, never in events.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

# onnxruntime's telemetry would try to persist a device id under $HOME (read-only in the container) and warn.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort  # noqa: E402

from cosim_service import Service  # noqa: E402

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "model.onnx"
FEATURES = ("rms", "peak", "crest", "kurtosis")

log = logging.getLogger("cosim.ml-inference")


class InferenceService(Service):
    capabilities = ("inference",)
    # Next-event: it emits only in response to requests (results due later are held, and the SDK promises them).
    next_event = True

    def __init__(self) -> None:
        self.session: ort.InferenceSession | None = None
        self.model_sha256 = ""
        self.threshold = 0.5
        self.delay_us = 0
        self.results = 0
        self.errors = 0
        self.ignored: Counter[str] = Counter()
        self.latencies_ns: list[int] = []

    # -- lifecycle --------------------------------------------------------------------------------

    def init(self, node_id: str, seed: int, config: dict[str, Any]) -> dict[str, str]:
        self._apply(config)
        return {"onnxruntime": ort.__version__, "numpy": np.__version__, "model_sha256": self.model_sha256}

    def configure(self, changes: dict[str, Any]) -> None:
        """The schedule's reconfigure: threshold, processing_delay_us (results of requests from now on) and
        model_path (another model in the image, loaded now). Checked before anything changes."""
        self._apply(changes)
        log.info("reconfigured at %s us: threshold %s, processing delay %s us, model %s", self.now_us,
                 self.threshold, self.delay_us, self.model_sha256[:12])

    def _apply(self, config: Mapping[str, Any]) -> None:
        """Check ``config`` (keys absent keep their current values), then apply it."""
        unknown = sorted(set(config) - {"model_path", "threshold", "processing_delay_us"})
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; expected model_path, threshold, processing_delay_us")
        threshold = config.get("threshold", self.threshold)
        if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"config threshold must be a number in [0, 1], got {threshold!r}")
        delay = config.get("processing_delay_us", self.delay_us)
        if not isinstance(delay, int) or isinstance(delay, bool) or delay < 0:
            raise ValueError(f"config processing_delay_us must be an integer >= 0, got {delay!r}")
        if self.session is None or "model_path" in config:
            # A relative path names a file beside this service: one of the models in the image (/app).
            self.session, self.model_sha256 = load_model(DEFAULT_MODEL_PATH.parent / (config.get("model_path")
                                                                                      or DEFAULT_MODEL_PATH))
        self.threshold = float(threshold)
        self.delay_us = delay

    def snapshot(self) -> dict[str, Any]:
        """A checkpoint: the config as it is now (INIT of the resumed process gets it too) and the counters; the
        outputs held for a processing delay are the SDK's (it carries them)."""
        return {"threshold": self.threshold, "processing_delay_us": self.delay_us, "model_sha256": self.model_sha256,
                "results": self.results, "errors": self.errors, "ignored": dict(sorted(self.ignored.items()))}

    def restore(self, saved: Mapping[str, Any]) -> None:
        if saved["model_sha256"] != self.model_sha256:  # INIT's config names the model: it must be the same one
            raise ValueError(f"the checkpoint was taken with model {saved['model_sha256'][:12]}, this process loaded "
                             f"{self.model_sha256[:12]}")
        self.threshold, self.delay_us = float(saved["threshold"]), int(saved["processing_delay_us"])
        self.results, self.errors = int(saved["results"]), int(saved["errors"])
        self.ignored = Counter(saved["ignored"])

    def shutdown(self) -> None:
        summary = f"{self.results} results, {self.errors} errors, ignored {dict(sorted(self.ignored.items()))}"
        if self.latencies_ns:
            us = np.array(self.latencies_ns, dtype=np.float64) / 1000.0
            summary += (f"; inference latency (wall clock, us): mean {us.mean():.1f} p50 {np.percentile(us, 50):.1f} "
                        f"p95 {np.percentile(us, 95):.1f} max {us.max():.1f}")
        log.info("%s", summary)

    # -- virtual time -----------------------------------------------------------------------------

    def advance(self, until_us: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for event in events:
            kind = event.get("type")
            if kind == "inference_request":
                request = event.get("data")
            elif kind == "mqtt_received":
                data = event.get("data")
                request = data.get("payload") if isinstance(data, dict) else None
                if isinstance(request, str):  # a gateway that passes a JSON payload through undecoded
                    try:
                        request = json.loads(request)
                    except ValueError:
                        pass
            else:
                self.ignored[str(kind)] += 1
                log.debug("ignoring %s event from %s at %s us", kind, event.get("source"), event.get("time_us"))
                continue
            out.append(self.handle_request(kind, request, event["time_us"] + self.delay_us))
        return out

    def handle_request(self, kind: str, request: Any, time_us: int) -> dict[str, Any]:
        if not isinstance(request, dict):
            where = "data" if kind == "inference_request" else "data.payload"
            return self._error(time_us, {}, f"{kind}: {where} must be a request object, got {type(request).__name__}")
        meta = {key: request.get(key) for key in ("sensor", "window", "sampled_us")}
        problem = _feature_problem(request.get("features"))
        if problem:
            return self._error(time_us, meta, f"{kind}: {problem}")
        assert self.session is not None
        features = np.array([request["features"]], dtype=np.float32)
        started = time.perf_counter_ns()  # metric only: never decides anything
        score = float(self.session.run(["score"], {"features": features})[0][0])
        self.latencies_ns.append(time.perf_counter_ns() - started)
        if not math.isfinite(score):
            return self._error(time_us, meta, f"{kind}: model returned a non-finite score for features {request['features']}")
        self.results += 1
        return {"type": "inference_result", "time_us": time_us, "data": {
            **meta,
            "label": "anomaly" if score > self.threshold else "normal",
            "score": round(score, 6),
            "model_sha256": self.model_sha256,
        }}

    def _error(self, time_us: int, meta: dict[str, Any], message: str) -> dict[str, Any]:
        self.errors += 1
        log.warning("%s", message)
        return {"type": "inference_error", "time_us": time_us, "data": {**meta, "error": message}}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _feature_problem(features: Any) -> str | None:
    """Why ``features`` is not a usable [rms, peak, crest, kurtosis] vector, or None."""
    expected = f"features must be a list of {len(FEATURES)} numbers ({', '.join(FEATURES)})"
    if not isinstance(features, list):
        return f"{expected}, got {type(features).__name__}"
    if len(features) != len(FEATURES):
        return f"{expected}, got {len(features)} values"
    for name, value in zip(FEATURES, features):
        if not _is_number(value):
            return f"{expected}, got {name} = {value!r}"
        if not math.isfinite(value):
            return f"{expected}, got {name} = {value!r} (not finite)"
    return None


def load_model(path: Path) -> tuple[ort.InferenceSession, str]:
    """A deterministic single-threaded CPU session for the model at ``path``, and the file's sha256."""
    try:
        model_bytes = path.read_bytes()
    except OSError as exc:
        raise RuntimeError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    ort.set_default_logger_severity(3)  # errors only on stderr
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.use_deterministic_compute = True
    options.log_severity_level = 3  # errors only on stderr
    try:
        session = ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise RuntimeError(f"cannot load model file {path}: {str(exc).strip().splitlines()[0][:300]}") from None
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    shape = inputs.get("features")
    if shape is None or len(shape) != 2 or shape[1] != len(FEATURES) or "score" not in outputs:
        raise RuntimeError(f"model file {path} does not take features [N, {len(FEATURES)}] to score [N] "
                           f"(inputs {inputs}, outputs {sorted(outputs)})")
    return session, hashlib.sha256(model_bytes).hexdigest()


if __name__ == "__main__":
    InferenceService().run()
