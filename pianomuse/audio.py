"""Audio previews: a score rendered to a WAV file with FluidSynth and a General MIDI soundfont.

FluidSynth (the reference SoundFont synthesizer) renders rather than symusic's own `Synthesizer`: in symusic 0.6.0,
the version the pipeline needs, `Synthesizer.render` computes the audio but cannot hand it to Python ("Unable to
convert function return value"), and symusic 0.5.x reads a truncated MIDI file without error, which the
tokenize stage relies on to reject it. FluidSynth's command line renders a MIDI file straight to a file.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from symusic import Score

from pianomuse.files import atomic_write

SAMPLE_RATE = 44100
# FluidSynth's default gain (0.2) leaves a solo piano some 30 dB below full scale; at 1.0 a dense MAESTRO passage
# still peaks below it.
GAIN = 1.0
# FluidSynth goes on rendering for seconds after the last sound (more after some tempo maps), as 16-bit samples of
# +-1 or so; what follows the later of the score's end and the last louder sample is cut, but for this much release.
SILENT_LEVEL = 4  # in 16-bit steps: -78 dB below full scale
RELEASE_SECONDS = 0.25
# Where the system's General MIDI soundfont packages put their file, best first: Debian's default-GM alternative
# (the admin's choice among fluid-soundfont-gm, timgm6mb-soundfont, ...), their files, Fedora's and Arch's FluidR3.
SYSTEM_SOUNDFONTS = (
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
)
HOW_TO_GET_ONE = (
    "pass --soundfont PATH (a General MIDI .sf2), or install one: on Debian or Ubuntu "
    "`apt-get install fluid-soundfont-gm` (or the smaller timgm6mb-soundfont)"
)


class AudioError(Exception):
    """No soundfont or no synthesizer, or a file that is not a soundfont: the message says how to get one."""


def is_soundfont(path: Path) -> bool:
    """A SoundFont 2 file is a RIFF file of form "sfbk" (FluidSynth would render silence from anything else)."""
    with open(path, "rb") as file:
        header = file.read(12)
    return header[:4] == b"RIFF" and header[8:12] == b"sfbk"


def find_soundfont(path: str | Path | None = None, candidates: Sequence[str] = SYSTEM_SOUNDFONTS) -> Path:
    """`path` when given (it must be a soundfont), else the first of the system's General MIDI soundfonts."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise AudioError(f"soundfont not found: {path}")
        if not is_soundfont(path):
            raise AudioError(f"{path} is not a SoundFont 2 (.sf2) file")
        return path
    for candidate in map(Path, candidates):
        if candidate.is_file() and is_soundfont(candidate):
            return candidate.resolve()
    raise AudioError(f"no General MIDI soundfont found (looked in {', '.join(candidates)}); {HOW_TO_GET_ONE}")


class Renderer:
    """Renders scores with one soundfont. Made before any work is done, so that a missing soundfont or synthesizer
    fails first."""

    def __init__(self, soundfont: str | Path | None = None, sample_rate: int = SAMPLE_RATE):
        self.soundfont = find_soundfont(soundfont)
        self.sample_rate = sample_rate
        self.fluidsynth = shutil.which("fluidsynth")
        if self.fluidsynth is None:
            raise AudioError(
                "audio needs the fluidsynth program, which is not on the PATH: on Debian or Ubuntu "
                "`apt-get install fluidsynth`"
            )

    def write_wav(self, score: Score, path: str | Path) -> None:
        """`score` as a 16-bit stereo WAV at `path` (written whole or not at all), with the release of its last
        notes."""
        with tempfile.TemporaryDirectory(prefix="pianomuse-audio-") as folder:
            midi = Path(folder) / "score.mid"
            score.dump_midi(str(midi))
            end_seconds = score.to("second").end()
            atomic_write(path, lambda tmp: self.render_midi(midi, tmp, end_seconds))

    def render_midi(self, midi: Path, wav: str | Path, end_seconds: float) -> None:
        """`midi` rendered into `wav`, up to its last sound (or `end_seconds`, the score's end) and a short release."""
        command = [
            self.fluidsynth, "-n", "-i", "-q", "-g", str(GAIN), "-r", str(self.sample_rate), "-T", "wav", "-O", "s16",
            "-F", str(wav), str(self.soundfont), str(midi),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise AudioError(f"fluidsynth failed on {midi} (exit {result.returncode}): {result.stderr.strip()}")
        trim_silence(wav, end_seconds)


def trim_silence(wav: str | Path, end_seconds: float) -> None:
    """Cut the silence at the end of a 16-bit WAV file: what follows both `end_seconds` and its last sample louder
    than SILENT_LEVEL, but for RELEASE_SECONDS."""
    with wave.open(str(wav)) as file:
        params, data = file.getparams(), file.readframes(file.getnframes())
    frames = np.frombuffer(data, dtype="<i2").reshape(-1, params.nchannels)
    loud = np.flatnonzero(np.abs(frames.astype(np.int32)).max(axis=1, initial=0) > SILENT_LEVEL)
    last = max(loud[-1] + 1 if len(loud) else 0, round(end_seconds * params.framerate))
    keep = min(len(frames), last + round(RELEASE_SECONDS * params.framerate))
    with wave.open(str(wav), "wb") as file:
        file.setparams(params)
        file.writeframes(frames[:keep].tobytes())
