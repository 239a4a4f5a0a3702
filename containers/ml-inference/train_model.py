"""Train the vibration-anomaly classifier and export it as ONNX (with the Python that has cosim installed: .venv's).

    .venv/bin/python containers/ml-inference/train_model.py [--output PATH] [--no-eval] [--min-severity S]

The image ships two: model.onnx (the default, faults of severity 0.6 to 1.0) and model-mild.onnx
(``--min-severity 0.3 --output containers/ml-inference/model-mild.onnx``: trained on milder faults too, so it
flags weaker anomalies), which a scenario can switch to during a run (`reconfigure` with `model_path`).

A logistic regression on the logarithms of the four window features (rms, peak, crest factor, kurtosis)
of synthetic windows from cosim.edge.vibration: healthy windows (severity 0) against bearing-fault windows
(severity drawn in [0.6, 1.0]). The log and the standardisation are part of the graph, so the model takes
the raw features. Logs, because the fault features spread over a wide range: on the log scale the fit puts
the boundary with a wider margin on the anomalous side.

The output file is bit-for-bit reproducible: fixed seeds, Newton's method to the exact (L2-regularised)
optimum, parameters rounded to 6 significant digits before export (so last-bit differences between
CPUs cannot change the file), fixed opset / ir_version / producer fields and deterministic serialisation.
Needs numpy and onnx (the dev extras); onnxruntime for the held-out evaluation.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cosim.edge.vibration import FEATURES, SignalParams, sample_features

HERE = Path(__file__).resolve().parent

OPSET = 17  # ai.onnx opset and IR version understood by onnxruntime >= 1.14
IR_VERSION = 8
PRODUCER_NAME = "cosim-train-model"
PRODUCER_VERSION = "1"
MODEL_VERSION = 1

TRAIN_SEED = 20240611
HELD_OUT_SEED = 20240612
TRAIN_PER_CLASS = 2000
HELD_OUT_PER_CLASS = 10000
SEVERITY_RANGE = (0.6, 1.0)  # the default model's; --min-severity moves the lower end
L2 = 1e-6  # keeps the weights finite on (nearly) separable data; small, so the fit approaches the max margin
NEWTON_STEPS = 100
LOG_FLOOR = 1e-6  # features are positive; the floor keeps log finite for a degenerate (e.g. all-zero) window


def dataset(seed: int, per_class: int, params: SignalParams,
            faults: tuple[float, float] = SEVERITY_RANGE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels (1 = anomaly) and severities; one seeded generator for signals, one for severities."""
    signal_rng = random.Random(seed)
    severity_rng = random.Random(seed + 1)
    rows, labels, severities = [], [], []
    for _ in range(per_class):
        rows.append(sample_features(signal_rng, params, 0.0))
        labels.append(0.0)
        severities.append(0.0)
        severity = severity_rng.uniform(*faults)
        rows.append(sample_features(signal_rng, params, severity))
        labels.append(1.0)
        severities.append(severity)
    return np.array(rows, dtype=np.float64), np.array(labels), np.array(severities)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def fit_logistic(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (bias unpenalised) by Newton's method; z is standardised."""
    n, d = z.shape
    x = np.hstack([z, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    penalty = np.full(d + 1, L2)
    penalty[-1] = 0.0
    for _ in range(NEWTON_STEPS):
        p = _sigmoid(x @ theta)
        gradient = x.T @ (p - y) / n + penalty * theta
        hessian = (x * (p * (1.0 - p))[:, None]).T @ x / n + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.max(np.abs(step)) < 1e-12:
            return theta[:d], float(theta[d])
    raise RuntimeError(f"logistic regression did not converge in {NEWTON_STEPS} Newton steps")


def log_features(x: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(x, LOG_FLOOR))


def _param(values: np.ndarray | list[float]) -> np.ndarray:
    """6 significant digits, then float32: immune to last-bit differences in the training arithmetic."""
    return np.array([float(f"{v:.6g}") for v in np.ravel(values)], dtype=np.float32).reshape(np.shape(values))


def build_model(mean: np.ndarray, std: np.ndarray, weights: np.ndarray, bias: float,
                severities: tuple[float, float] = SEVERITY_RANGE) -> onnx.ModelProto:
    n_features = len(FEATURES)
    initializers = [
        numpy_helper.from_array(np.array([LOG_FLOOR], dtype=np.float32), "log_floor"),
        numpy_helper.from_array(_param(mean), "feature_mean"),
        numpy_helper.from_array(_param(std), "feature_std"),
        numpy_helper.from_array(_param(weights).reshape(n_features, 1), "weights"),
        numpy_helper.from_array(_param([bias]), "bias"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Max", ["features", "log_floor"], ["floored"], name="floor"),
        helper.make_node("Log", ["floored"], ["log_features"], name="log"),
        helper.make_node("Sub", ["log_features", "feature_mean"], ["centred"], name="centre"),
        helper.make_node("Div", ["centred", "feature_std"], ["standardised"], name="scale"),
        helper.make_node("MatMul", ["standardised", "weights"], ["weighted"], name="weigh"),
        helper.make_node("Add", ["weighted", "bias"], ["logit_column"], name="add_bias"),
        helper.make_node("Reshape", ["logit_column", "flat_shape"], ["logit"], name="flatten"),
        helper.make_node("Sigmoid", ["logit"], ["score"], name="probability"),
    ]
    graph = helper.make_graph(
        nodes,
        "vibration_anomaly",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])],
        outputs=[helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        initializer=initializers,
        doc_string="score = P(anomaly) of one vibration window per row; features: " + ", ".join(FEATURES),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        model_version=MODEL_VERSION,
        doc_string="Logistic regression on log features, vibration anomaly detector; produced by containers/ml-inference/train_model.py",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {
        "features": ",".join(FEATURES),
        "train_seed": str(TRAIN_SEED),
        "train_severity": f"{severities[0]}..{severities[1]}",
    })
    onnx.checker.check_model(model, full_check=True)
    return model


def train(severities: tuple[float, float] = SEVERITY_RANGE) -> onnx.ModelProto:
    x, y, _ = dataset(TRAIN_SEED, TRAIN_PER_CLASS, SignalParams(), severities)
    x = log_features(x)
    mean, std = x.mean(axis=0), x.std(axis=0)
    weights, bias = fit_logistic((x - mean) / std, y)
    return build_model(mean, std, weights, bias, severities)


def evaluate(model_bytes: bytes, severities: tuple[float, float] = SEVERITY_RANGE) -> None:
    """Held-out metrics of the exported file itself, run through onnxruntime."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    params = SignalParams()
    x, y, severity = dataset(HELD_OUT_SEED, HELD_OUT_PER_CLASS, params, severities)
    score = session.run(["score"], {"features": x.astype(np.float32)})[0]
    predicted = score > 0.5
    healthy, anomalous = y == 0, y == 1
    false_positives = int(np.sum(predicted & healthy))
    missed = int(np.sum(~predicted & anomalous))
    print(f"held-out: {healthy.sum()} healthy, {anomalous.sum()} anomalous (severity {severities[0]}..{severities[1]})")
    print(f"  accuracy {np.mean(predicted == anomalous):.5f}; false positives {false_positives} "
          f"(rate {false_positives / healthy.sum():.5f}); missed anomalies {missed} (rate {missed / anomalous.sum():.5f})")
    print(f"  max healthy score {score[healthy].max():.6f}; min anomalous score {score[anomalous].min():.6f}")
    rng = random.Random(HELD_OUT_SEED + 2)
    for level, count in ((0.2, 1000), (0.4, 1000), (0.5, 1000), (0.6, 5000)):
        rows = np.array([sample_features(rng, params, level) for _ in range(count)], dtype=np.float32)
        level_score = session.run(["score"], {"features": rows})[0]
        print(f"  severity exactly {level}: detected {np.mean(level_score > 0.5):.4f} of {count} "
              f"(min score {level_score.min():.6f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE / "model.onnx", help="where to write the model")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation (needs onnxruntime)")
    parser.add_argument("--min-severity", type=float, default=SEVERITY_RANGE[0],
                        help=f"the mildest fault in the training set (default {SEVERITY_RANGE[0]})")
    args = parser.parse_args(argv)
    severities = (args.min_severity, SEVERITY_RANGE[1])
    model_bytes = train(severities).SerializeToString(deterministic=True)
    args.output.write_bytes(model_bytes)
    print(f"wrote {args.output} ({len(model_bytes)} bytes, sha256 {hashlib.sha256(model_bytes).hexdigest()})")
    if not args.no_eval:
        evaluate(model_bytes, severities)
    return 0


if __name__ == "__main__":
    sys.exit(main())
