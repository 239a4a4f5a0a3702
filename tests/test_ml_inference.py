"""The ml-inference service over the real protocol (local subprocess, no Docker) and its model's reproducibility."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from cosim.edge.vibration import SignalParams, sample_features
from tests.service_process import ROOT, ServiceProcess

SERVICE_DIR = ROOT / "containers" / "ml-inference"
SERVICE = SERVICE_DIR / "service.py"
MODEL = SERVICE_DIR / "model.onnx"
MODEL_SHA256 = hashlib.sha256(MODEL.read_bytes()).hexdigest()


def request(time_us: int, features: Any, *, window: int = 0, sensor: str = "s1", seq: int = 0) -> dict[str, Any]:
    return {"type": "inference_request", "time_us": time_us, "source": sensor, "seq": seq, "sent_us": time_us - 10,
            "data": {"sensor": sensor, "window": window, "sampled_us": time_us - 10, "features": features}}


def direct_scores(rows: list[list[float]]) -> list[float]:
    """The committed model run directly, one row at a time (as the service does)."""
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    return [round(float(session.run(["score"], {"features": np.array([row], dtype=np.float32)})[0][0]), 6)
            for row in rows]


@pytest.fixture
def service():
    with ServiceProcess(SERVICE) as proc:
        yield proc


def test_classifies_healthy_as_normal_and_faults_as_anomaly(service: ServiceProcess) -> None:
    rng, severity_rng = random.Random(42), random.Random(43)
    params = SignalParams()
    healthy = [sample_features(rng, params, 0.0) for _ in range(30)]
    faulty = [sample_features(rng, params, severity_rng.uniform(0.6, 1.0)) for _ in range(30)]
    rows = healthy + faulty
    events = [request(100 + 10 * i, row, window=i) for i, row in enumerate(rows)]
    assert service.init()["type"] == "READY"
    done = service.advance(1_000, events)
    assert done["type"] == "DONE" and len(done["events"]) == len(rows)
    results = [event["data"] for event in done["events"]]
    assert [r["label"] for r in results] == ["normal"] * 30 + ["anomaly"] * 30
    assert [r["score"] for r in results] == direct_scores(rows)
    assert [r["window"] for r in results] == list(range(len(rows)))
    assert {(r["sensor"], r["model_sha256"]) for r in results} == {("s1", MODEL_SHA256)}
    assert [e["time_us"] for e in done["events"]] == [e["time_us"] for e in events]  # no delay by default
    assert service.shutdown() == 0


def test_ready_advertises_inference_capability(service: ServiceProcess) -> None:
    import numpy
    import onnxruntime

    assert service.init() == {"type": "READY", "time_us": 0, "protocol": 1,
                              "capabilities": ["configure", "inference", "snapshot"], "next_event": True,
                              "info": {"model_sha256": MODEL_SHA256, "onnxruntime": onnxruntime.__version__,
                                       "numpy": numpy.__version__}}


@pytest.mark.parametrize("as_text", [False, True])
def test_mqtt_received_payload_is_a_request(service: ServiceProcess, as_text: bool) -> None:
    features = sample_features(random.Random(7), SignalParams(), 1.0)
    payload = {"sensor": "s2", "window": 9, "sampled_us": 400, "features": features}
    service.init()
    wrapped = {"type": "mqtt_received", "time_us": 500, "source": "gateway", "seq": 3, "sent_us": 450,
               "data": {"topic": "factory/s2/features", "payload": json.dumps(payload) if as_text else payload}}
    done = service.advance(1_000, [wrapped])
    assert done["events"] == [{"type": "inference_result", "time_us": 500, "data": {
        "sensor": "s2", "window": 9, "sampled_us": 400, "label": "anomaly", "score": direct_scores([features])[0],
        "model_sha256": MODEL_SHA256}}]


def test_results_are_stamped_after_the_processing_delay(service: ServiceProcess) -> None:
    features = sample_features(random.Random(8), SignalParams(), 0.0)
    service.init({"processing_delay_us": 250})
    first = service.advance(1_000, [request(300, features, window=1), request(900, features, window=2)])
    assert [(e["time_us"], e["data"]["window"]) for e in first["events"]] == [(550, 1)]
    second = service.advance(2_000)  # the result of the request at 900 us is due at 1150 us: next window
    assert [(e["time_us"], e["data"]["window"]) for e in second["events"]] == [(1_150, 2)]
    assert second["events"][0]["data"]["label"] == "normal"


def test_configure_changes_threshold_and_delay_for_later_requests_and_refuses_unknown_keys(
        service: ServiceProcess) -> None:
    features = sample_features(random.Random(8), SignalParams(), 0.6)
    service.init({"processing_delay_us": 100})
    before = service.advance(1_000, [request(300, features, window=1)])["events"][0]
    assert service.request({"type": "CONFIGURE", "time_us": 1_000, "config": {"threshold": 1.0,
                                                                              "processing_delay_us": 10}}) == {
        "type": "CONFIGURED", "time_us": 1_000}
    after = service.advance(2_000, [request(1_300, features, window=2)])["events"][0]
    assert (before["time_us"], after["time_us"]) == (400, 1_310)
    assert after["data"]["score"] == before["data"]["score"] and after["data"]["label"] == "normal"  # nothing > 1.0
    refused = service.request({"type": "CONFIGURE", "time_us": 2_000, "config": {"treshold": 0.2}})
    assert refused["type"] == "ERROR" and refused["error"] == "configure_failed"
    assert "unknown config keys ['treshold']" in refused["detail"]
    bad = service.request({"type": "CONFIGURE", "time_us": 2_000, "config": {"threshold": 0.2, "processing_delay_us": -1}})
    assert bad["error"] == "configure_failed"
    third = service.advance(3_000, [request(2_300, features, window=3)])["events"][0]
    assert third["time_us"] == 2_310 and third["data"]["label"] == "normal"  # the refused change changed nothing


def test_configure_switches_to_the_other_model_in_the_image(service: ServiceProcess) -> None:
    mild = sample_features(random.Random(4), SignalParams(), 0.4)  # a mild fault: below what model.onnx flags
    service.init()
    before = service.advance(1_000, [request(500, mild, window=1)])["events"][0]["data"]
    assert service.request({"type": "CONFIGURE", "time_us": 1_000, "config": {"model_path": "model-mild.onnx"}})[
        "type"] == "CONFIGURED", service.stderr()
    after = service.advance(2_000, [request(1_500, mild, window=2)])["events"][0]["data"]
    assert (before["label"], after["label"]) == ("normal", "anomaly")
    assert (before["model_sha256"], after["model_sha256"]) == (
        MODEL_SHA256, hashlib.sha256((SERVICE_DIR / "model-mild.onnx").read_bytes()).hexdigest())


def test_same_input_gives_bitwise_identical_output() -> None:
    rng = random.Random(9)
    rows = [sample_features(rng, SignalParams(), severity) for severity in (0.0, 0.3, 0.45, 0.6, 1.0)]
    events = [request(100 * (i + 1), row, window=i) for i, row in enumerate(rows)]
    replies = []
    for _ in range(2):
        with ServiceProcess(SERVICE) as proc:
            proc.init({"processing_delay_us": 40})
            replies.append(proc.advance(1_000, events))
            replies.append(proc.advance(2_000, [dict(e, time_us=e["time_us"] + 1_000) for e in events]))
            assert proc.shutdown() == 0
    first_run, second_run = replies[:2], replies[2:]
    assert first_run == second_run
    scores = [[e["data"]["score"] for e in reply["events"]] for reply in replies]
    assert scores[0] == scores[1] == scores[2] == scores[3]  # the same window's score never changes
    assert all(0.0 <= s <= 1.0 for s in scores[0])


def test_threshold_moves_the_decision(service: ServiceProcess) -> None:
    features = sample_features(random.Random(10), SignalParams(), 0.0)
    score = direct_scores([features])[0]
    service.init({"threshold": score / 2})
    done = service.advance(1_000, [request(100, features)])
    assert done["events"][0]["data"]["label"] == "anomaly"
    assert done["events"][0]["data"]["score"] == score


@pytest.mark.parametrize(("features", "problem"), [
    ([1.0, 2.0, 3.0], "got 3 values"),
    ([1.0, 2.0, "x", 4.0], "got crest = 'x'"),
    ([1.0, True, 3.0, 4.0], "got peak = True"),
    ("1,2,3,4", "got str"),
    (None, "got NoneType"),
])
def test_bad_features_give_an_inference_error_and_the_service_survives(
        service: ServiceProcess, features: Any, problem: str) -> None:
    good = sample_features(random.Random(11), SignalParams(), 0.0)
    service.init()
    done = service.advance(1_000, [request(100, features, window=5), request(200, good, window=6)])
    error, result = done["events"]
    assert error["type"] == "inference_error" and error["time_us"] == 100
    assert error["data"]["window"] == 5 and error["data"]["sensor"] == "s1"
    assert error["data"]["error"] == ("inference_request: features must be a list of 4 numbers "
                                      f"(rms, peak, crest, kurtosis), {problem}")
    assert result["type"] == "inference_result" and result["data"]["window"] == 6
    assert service.advance(2_000, [request(1_500, good, window=7)])["events"][0]["type"] == "inference_result"
    assert service.shutdown() == 0


def test_mqtt_payload_that_is_not_a_request_is_an_error(service: ServiceProcess) -> None:
    service.init()
    done = service.advance(1_000, [{"type": "mqtt_received", "time_us": 10, "source": "gw", "seq": 0, "sent_us": 5,
                                    "data": {"topic": "t", "payload": "not json"}}])
    assert done["events"] == [{"type": "inference_error", "time_us": 10, "data": {
        "error": "mqtt_received: data.payload must be a request object, got str"}}]


def test_other_events_are_ignored_and_counted_at_shutdown(service: ServiceProcess) -> None:
    good = sample_features(random.Random(12), SignalParams(), 0.0)
    service.init()
    done = service.advance(1_000, [{"type": "tick", "time_us": 5, "source": "x", "seq": 0, "sent_us": 5, "data": {}},
                                   request(10, good)])
    assert [e["type"] for e in done["events"]] == ["inference_result"]
    assert service.shutdown() == 0
    stderr = service.stderr()
    assert "1 results, 0 errors, ignored {'tick': 1}; inference latency (wall clock, us): mean " in stderr


def test_missing_model_fails_init_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.onnx"
    with ServiceProcess(SERVICE) as proc:
        reply = proc.init({"model_path": str(missing)})
        assert reply["type"] == "ERROR" and reply["error"] == "init_failed" and reply["fatal"] is True
        assert f"cannot read model file {missing}: No such file or directory" in reply["detail"]
        assert proc.proc.wait(timeout=proc.timeout_s) == 1


def test_corrupt_model_fails_init_naming_the_path(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf")
    with ServiceProcess(SERVICE) as proc:
        reply = proc.init({"model_path": str(corrupt)})
        assert reply["error"] == "init_failed" and f"cannot load model file {corrupt}: " in reply["detail"]
        assert proc.proc.wait(timeout=proc.timeout_s) == 1


@pytest.mark.parametrize(("config", "message"), [
    ({"threshold": 2}, "config threshold must be a number in [0, 1], got 2"),
    ({"processing_delay_us": -1}, "config processing_delay_us must be an integer >= 0, got -1"),
    ({"modelpath": "x"}, "unknown config keys ['modelpath']"),
])
def test_bad_config_fails_init(config: dict[str, Any], message: str) -> None:
    with ServiceProcess(SERVICE) as proc:
        reply = proc.init(config)
        assert reply["error"] == "init_failed" and message in reply["detail"]
        assert proc.proc.wait(timeout=proc.timeout_s) == 1


@pytest.mark.parametrize("name, options", [("model.onnx", []), ("model-mild.onnx", ["--min-severity", "0.3"])])
def test_train_model_regenerates_the_committed_models_bit_for_bit(tmp_path: Path, name: str, options: list[str]) -> None:
    output = tmp_path / name
    completed = subprocess.run([sys.executable, str(SERVICE_DIR / "train_model.py"), "--no-eval", "--output", str(output),
                                *options], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert output.read_bytes() == (SERVICE_DIR / name).read_bytes()
