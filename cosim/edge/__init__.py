"""The demo application, an edge vibration-monitoring plant, plugged into cosim through cosim.plugins.

- ``vibration``: synthetic vibration windows and their features (the sensor model, and the classifier's training
  data in containers/ml-inference/train_model.py);
- ``detections``: what a run found (each injected anomaly, detected or not, and how fast), for the summary;
- ``report``: what `invoke report` shows of it (sensor-to-verdict latency, each anomaly and its detection).

Importing this package registers the ``vibration`` sensor model: a scenario's sensors name it (``model:
vibration``, the default), and their readings are ``inference_request`` events carrying the window's features.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from cosim import plugins
from cosim.edge import detections
from cosim.edge.vibration import SignalParams, sample_features

if TYPE_CHECKING:
    from cosim.model import Scenario
    from cosim.trace import Trace

_PARAMS = SignalParams()


def _reading(rng: random.Random, severity: float) -> dict[str, Any]:
    return {"features": sample_features(rng, _PARAMS, severity)}


def _report(trace: Trace, scenario: Scenario) -> plugins.ReportParts | None:
    from cosim.edge.report import report_parts  # the report's module only when a report is made

    return report_parts(trace, scenario)


VIBRATION = plugins.SensorPlugin(name="vibration", event_type="inference_request", reading=_reading,
                                 summary=detections.print_summary, report=_report)
plugins.register(VIBRATION)
