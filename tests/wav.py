"""Reading the WAV files pianomuse writes, for tests: samples as floats in [-1, 1]."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """([frames, channels] float array, sample rate) of a 16-bit PCM WAV file."""
    with wave.open(str(path)) as file:
        assert file.getsampwidth() == 2, "pianomuse writes 16-bit samples"
        frames = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2")
        return frames.reshape(-1, file.getnchannels()).astype(np.float64) / 32768, file.getframerate()


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """The frequency (Hz) of the strongest peak of a mono signal's spectrum, to a fraction of a bin."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    peak = int(spectrum[1:].argmax()) + 1
    # A parabola through the peak's bin and its neighbours (on a log scale) places the peak between bins.
    left, middle, right = np.log(spectrum[peak - 1 : peak + 2] + 1e-12)
    offset = 0.5 * (left - right) / (left - 2 * middle + right)
    return (peak + offset) * rate / len(samples)
