"""Synthetic vibration windows and their features: one generator for the sensor model and the model's training.

A healthy machine vibrates at its shaft frequency with a little broadband noise. A bearing fault adds
short, decaying impulses at the fault frequency: the RMS barely moves but the peak, the crest factor and
the kurtosis jump. The sensor reports the features of each window, as real condition-monitoring sensors
do, and the inference service classifies them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

FEATURES = ("rms", "peak", "crest", "kurtosis")


@dataclass(frozen=True)
class SignalParams:
    samples: int = 256
    sample_rate_hz: float = 2560.0
    shaft_hz: float = 50.0
    amplitude: float = 1.0
    noise: float = 0.15
    # Outer-race fault at 3.58x shaft speed (a typical BPFO ratio). Not near a multiple of shaft_hz / 2:
    # at 97 Hz every impulse met the sine at the same phase, so some faulty windows looked healthy.
    fault_hz: float = 179.0
    fault_amplitude: float = 3.0  # at 2.5 a few severity-0.6 windows (~1 in 5000) scored as healthy


def window(rng: random.Random, params: SignalParams, severity: float = 0.0) -> list[float]:
    """One window of samples; ``severity`` in [0, 1] scales the bearing-fault impulses (0 = healthy)."""
    amplitude = params.amplitude * rng.uniform(0.8, 1.2)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    fault_phase = rng.uniform(0.0, 1.0)
    dt = 1.0 / params.sample_rate_hz
    omega = 2.0 * math.pi * params.shaft_hz  # evaluated left to right, as in 2.0 * math.pi * shaft_hz * t
    noise = params.noise
    # rng.gauss(0.0, noise), inlined (the sensor model's hot loop): the same draws in the same order, and the
    # pending second value of each Box-Muller pair kept in rng.gauss_next as Random.gauss keeps it.
    uniform, sin, cos, log, sqrt = rng.random, math.sin, math.cos, math.log, math.sqrt
    pending = rng.gauss_next  # type: ignore[attr-defined]  # CPython's Random keeps gauss()'s spare value here
    out = []
    for i in range(params.samples):
        t = i * dt
        if pending is None:
            x2pi = uniform() * _TWO_PI
            g2rad = sqrt(-2.0 * log(1.0 - uniform()))
            z = cos(x2pi) * g2rad
            pending = sin(x2pi) * g2rad
        else:
            z, pending = pending, None
        value = amplitude * sin(omega * t + phase) + (0.0 + z * noise)
        if severity > 0.0:
            since_impulse = (t * params.fault_hz + fault_phase) % 1.0 / params.fault_hz
            value += severity * params.fault_amplitude * math.exp(-since_impulse * 900.0) * rng.choice((-1.0, 1.0))
        out.append(value)
    rng.gauss_next = pending  # type: ignore[attr-defined]  # (see above)
    return out


_TWO_PI = 2.0 * math.pi  # Random.gauss's TWOPI


def features(samples: list[float]) -> list[float]:
    """[rms, peak, crest factor, kurtosis] of one window, rounded so they print and hash stably."""
    n = len(samples)
    mean = sum(samples) / n
    centred = [x - mean for x in samples]
    squares = [x * x for x in centred]
    variance = sum(squares) / n
    rms = math.sqrt(sum([x * x for x in samples]) / n)
    peak = max(map(abs, samples))
    kurtosis = (sum([x**4 for x in centred]) / n) / (variance * variance) if variance > 0 else 0.0
    crest = peak / rms if rms > 0 else 0.0
    return [round(rms, 6), round(peak, 6), round(crest, 6), round(kurtosis, 6)]


def sample_features(rng: random.Random, params: SignalParams, severity: float = 0.0) -> list[float]:
    return features(window(rng, params, severity))
