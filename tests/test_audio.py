"""Audio previews: finding a soundfont, rendering a score to WAV (pitch, timing, length), `complete --audio`."""

from __future__ import annotations

import wave

import numpy as np
import pytest
from midi_factory import make_piano_score, write_midi
from symusic import Note, Score, Tempo, TimeSignature, Track
from wav import dominant_frequency, read_wav

from pianomuse.audio import RELEASE_SECONDS, SAMPLE_RATE, AudioError, Renderer, find_soundfont, trim_silence
from pianomuse.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def one_note(pitch: int, start_s: float, seconds: float, tpq: int = 480) -> Score:
    """A piano score at 120 qpm (a quarter note lasts 0.5 s) holding one note."""
    score = Score(tpq)
    score.tempos.append(Tempo(0, qpm=120))
    score.time_signatures.append(TimeSignature(0, 4, 4))
    track = Track("piano", 0, False)
    track.notes.append(Note(int(start_s * 2 * tpq), int(seconds * 2 * tpq), pitch, 100))
    score.tracks.append(track)
    return score


def fake_soundfont(path):
    path.write_bytes(b"RIFF\x04\x00\x00\x00sfbk")
    return path


def test_soundfont_given_must_exist_and_be_a_soundfont(tmp_path):
    with pytest.raises(AudioError, match="soundfont not found: "):
        find_soundfont(tmp_path / "absent.sf2")
    not_sf2 = write_midi(make_piano_score(1, 1), tmp_path / "piano.sf2")
    with pytest.raises(AudioError, match="is not a SoundFont 2"):
        find_soundfont(not_sf2)
    assert find_soundfont(fake_soundfont(tmp_path / "mine.sf2")) == tmp_path / "mine.sf2"


def test_the_first_system_soundfont_is_found_and_none_says_how_to_get_one(tmp_path):
    (tmp_path / "broken.sf2").write_text("not a soundfont")
    second = fake_soundfont(tmp_path / "second.sf2")
    fake_soundfont(tmp_path / "third.sf2")
    candidates = [str(tmp_path / name) for name in ["absent.sf2", "broken.sf2", "second.sf2", "third.sf2"]]
    assert find_soundfont(None, candidates) == second
    with pytest.raises(AudioError) as error:
        find_soundfont(None, candidates[:2])
    assert "no General MIDI soundfont found" in str(error.value)
    assert "--soundfont PATH" in str(error.value) and "apt-get install fluid-soundfont-gm" in str(error.value)


def test_missing_fluidsynth_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AudioError, match="apt-get install fluidsynth"):
        Renderer(fake_soundfont(tmp_path / "mine.sf2"))


@pytest.mark.parametrize(("pitch", "hertz"), [(69, 440.0), (72, 523.25), (76, 659.26)])
def test_a_note_sounds_at_its_pitch_when_it_starts(renderer, tmp_path, pitch, hertz):
    """One note from 1 s to 3 s: silence before it, its fundamental the strongest partial while it sounds."""
    renderer.write_wav(one_note(pitch, 1.0, 2.0), tmp_path / "note.wav")
    samples, rate = read_wav(tmp_path / "note.wav")
    assert rate == SAMPLE_RATE and samples.shape[1] == 2
    assert 3.0 <= len(samples) / rate <= 3.0 + 4.0  # the note's end, plus at most a few seconds of release
    mono = samples.mean(axis=1)
    before, during = mono[: int(0.95 * rate)], mono[int(1.2 * rate) : int(2.2 * rate)]
    assert np.abs(before).max() < 1e-3
    assert np.sqrt(np.mean(during**2)) > 0.01  # clearly audible
    assert dominant_frequency(during, rate) == pytest.approx(hertz, rel=0.01)  # a sixth of a semitone


def write_pcm(path, frames: np.ndarray, rate: int = 1000) -> None:
    with wave.open(str(path), "wb") as file:
        file.setnchannels(frames.shape[1])
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(frames.astype("<i2").tobytes())


@pytest.mark.parametrize(("end_seconds", "kept_seconds"), [(0.5, 1.0), (2.0, 2.0), (9.0, 4.0)])
def test_trim_silence_cuts_what_follows_the_last_sound_and_the_score_end(tmp_path, end_seconds, kept_seconds):
    """1 s of tone, then 3 s of FluidSynth's near-silence (+-1): the WAV is cut after the later of the tone and the
    score's end, plus the release allowance, and never lengthened."""
    rate = 1000
    tone = (8000 * np.sin(np.arange(rate) * 0.3)).round()
    hiss = np.where(np.arange(3 * rate) % 2, 1, -1)
    frames = np.stack([np.concatenate([tone, hiss])] * 2, axis=1)
    write_pcm(tmp_path / "a.wav", frames, rate)
    trim_silence(tmp_path / "a.wav", end_seconds)
    samples, read_rate = read_wav(tmp_path / "a.wav")
    expected = min(4.0, kept_seconds + RELEASE_SECONDS)
    assert read_rate == rate and len(samples) == round(expected * rate)
    assert np.array_equal(np.rint(samples * 32768), frames[: len(samples)])  # the rest is untouched


def test_a_render_ends_soon_after_its_last_sound(renderer, tmp_path):
    """Eight short notes, the last bars at a faster tempo: FluidSynth renders seconds of silence after them, which
    are cut; the last note's release is kept."""
    score = Score(480)
    score.tempos.extend([Tempo(0, qpm=120), Tempo(1920, qpm=240)])
    track = Track("piano", 0, False)
    track.notes.extend([Note(bar * 1920, 480, 60, 90) for bar in range(8)])
    score.tracks.append(track)
    renderer.write_wav(score, tmp_path / "notes.wav")
    samples, rate = read_wav(tmp_path / "notes.wav")
    end = score.to("second").end()  # 8.25 s
    assert end <= len(samples) / rate <= end + 1.0
    assert np.abs(samples[int(end * rate) - rate // 10 : int(end * rate)]).max() > 0.01  # the last note, to its end


def test_an_empty_score_renders_silence(renderer, tmp_path):
    renderer.write_wav(Score(480), tmp_path / "empty.wav")
    samples, _ = read_wav(tmp_path / "empty.wav")
    assert np.abs(samples).max() < 1e-3


def test_cli_audio_writes_a_wav_per_sample(checkpoint, tmp_path, renderer, capsys):
    prompt = write_midi(make_piano_score(4, 4, seed=1), tmp_path / "prompt.mid")
    out = tmp_path / "out"
    args = ["complete", str(prompt), "--checkpoint", str(checkpoint), "--prompt-bars", "2", "--bars", "2"]
    assert main([*args, "--samples", "2", "--audio", "-o", str(out)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.wav")) == ["sample-0.wav", "sample-1.wav"]
    for i in range(2):
        samples, rate = read_wav(out / f"sample-{i}.wav")
        seconds = Score(str(out / f"sample-{i}.mid")).to("second").end()
        assert rate == SAMPLE_RATE and seconds <= len(samples) / rate <= seconds + 4.0
        assert np.abs(samples[: int(2 * rate)]).max() > 0.01  # the prompt's two bars (4 s at 120 qpm) are heard


def test_cli_audio_without_a_soundfont_fails_first_and_writes_nothing(checkpoint, tmp_path, capsys):
    prompt = write_midi(make_piano_score(4, 4), tmp_path / "prompt.mid")
    out = tmp_path / "out"
    args = ["complete", str(prompt), "--checkpoint", str(checkpoint), "--audio", "--soundfont", str(prompt)]
    assert main([*args, "-o", str(out)]) == 1
    assert "is not a SoundFont 2" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        main([*args[:-3], "--soundfont", str(prompt), "-o", str(out)])  # --soundfont without --audio
    assert exit_info.value.code == 2 and "--soundfont is for --audio" in capsys.readouterr().err
