"""`pianomuse studio`: the editing logic (load, generate, keep, undo, continue from a kept sample) and the HTTP API,
with a random tiny checkpoint. The page in a real browser is tests/test_studio_browser.py."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import wave
from dataclasses import dataclass
from functools import partial

import numpy as np
import pytest
from midi_factory import make_piano_score
from symusic import Score
from wav import read_wav

import pianomuse.studio as studio_module
from pianomuse.audio import SAMPLE_RATE
from pianomuse.cli import main
from pianomuse.complete import CONTINUATION_TRACK, Completer, CompletionError, Sampling
from pianomuse.studio import MAX_UPLOAD_BYTES, Studio, make_server

pytestmark = pytest.mark.usefixtures("one_thread")

SIX_BARS = make_piano_score(6, 4, pitches=[60, 64, 67, 72], seed=0)  # 4/4 at 120 qpm, tpq 480: a bar is 1920 ticks
BAR = 1920
GENERATE = {
    "first_bar": 1,
    "last_bar": 6,
    "bars": 1,
    "samples": 1,
    "temperature": 1.0,
    "top_p": 1.0,
    "seed": 0,
    "stay_in_key": 0.0,
}


class SilentRenderer:
    """Stands in for FluidSynth where the editing logic is tested: a tenth of a second of silence per file."""

    def write_wav(self, score, path):
        with wave.open(str(path), "wb") as file:
            file.setnchannels(2)
            file.setsampwidth(2)
            file.setframerate(SAMPLE_RATE)
            file.writeframes(bytes(4 * SAMPLE_RATE // 10))


@pytest.fixture(scope="module")
def completer(checkpoint) -> Completer:
    return Completer.load(checkpoint)


@pytest.fixture
def studio(completer, tmp_path) -> Studio:
    return Studio(completer, SilentRenderer(), tmp_path)


def wait(studio: Studio) -> dict:
    """The job's state once it stops running (a bound on the wait, not a timing check)."""
    for _ in range(2400):
        job = studio.job_state()
        if job["state"] not in ("running", "rendering"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"the generation did not finish: {job}")


def notes(score: Score, track_name: str | None = None) -> list[tuple[int, int, int, int]]:
    return sorted(
        (note.time, note.duration, note.pitch, note.velocity)
        for track in score.tracks
        if track_name is None or track.name == track_name
        for note in track.notes
    )


def round_of(studio: Studio, first: int, last: int, keep: int, bars: int = 2, seed: int = 0) -> None:
    studio.start(first, last, Sampling(bars=bars, samples=2, seed=seed))
    assert wait(studio)["state"] == "done"
    studio.keep(keep)


def test_bad_uploads_say_why_and_keep_the_piece(studio):
    studio.load(SIX_BARS.dumps_midi(), "six.mid")
    drums = make_piano_score(2, 4, is_drum=True).dumps_midi()
    for data, name, message in [
        (b"MThd but not really", "notes.mid", "notes.mid is not a MIDI file"),
        (drums, "drums.mid", "drums.mid cannot be continued: no piano notes"),
        (Score(480).dumps_midi(), "empty.mid", "empty.mid cannot be continued: empty"),
    ]:
        with pytest.raises(CompletionError, match=message):
            studio.load(data, name)
    assert studio.name == "six.mid" and studio.bars == 6 and notes(studio.piece) == notes(SIX_BARS)


def test_generate_offers_k_continuations_of_the_prompt_bars_with_progress(studio):
    studio.load(SIX_BARS.dumps_midi(), "six.mid")
    job = studio.start(3, 6, Sampling(bars=2, samples=3, seed=4))
    assert job.total == 6
    assert wait(studio) == {"number": 1, "total": 6, "state": "done", "done": 6, "error": None}
    assert len(studio.candidates) == 3
    prompt = [(t - 2 * BAR, d, p, v) for t, d, p, v in notes(SIX_BARS) if t >= 2 * BAR]  # bars 3..6, from tick 0
    for candidate in studio.candidates:
        assert candidate.first_bar == 3 and candidate.bars == 6 and candidate.continuation_tick == 4 * BAR
        assert notes(candidate.heard)[: len(prompt)] == prompt  # what is heard: the prompt bars, then the sample
        continuation = notes(candidate.piece, CONTINUATION_TRACK)
        assert len(continuation) == candidate.notes and all(t >= 6 * BAR for t, *_ in continuation)
        assert notes(candidate.piece)[:24] == notes(SIX_BARS)  # what keeping makes: the whole piece, then the sample
    assert len({tuple(notes(c.piece)) for c in studio.candidates}) == 3
    state = studio.state()
    assert [c["audio"] for c in state["candidates"]] == [f"/audio/candidate-{i}.wav?v=1" for i in range(3)]
    assert all(studio.audio(f"candidate-{i}").is_file() for i in range(3))
    studio.start(1, 2, Sampling(bars=1, samples=1))  # a new round: the samples of the last one go
    assert studio.candidates == [] and wait(studio)["state"] == "done" and len(studio.candidates) == 1


def test_keep_appends_and_the_next_round_continues_from_the_kept_sample(studio, completer):
    studio.load(SIX_BARS.dumps_midi(), "six.mid")
    round_of(studio, 3, 6, keep=1)
    first_kept = notes(studio.piece, CONTINUATION_TRACK)
    assert studio.candidates == [] and studio.history[0][1] == 6 and studio.bars > 6
    # Round two: its prompt ends in the kept continuation, and the model reads that continuation in it.
    bars = studio.bars
    studio.start(bars - 3, bars, Sampling(bars=2, samples=2, seed=1))
    assert wait(studio)["state"] == "done"
    kept_in_prompt = completer.prompt_ids(studio.piece, (bars - 3, bars))
    assert completer.prompt_ids(studio.candidates[0].piece, (bars - 3, bars)) == kept_in_prompt
    studio.keep(0)
    piece = studio.piece
    assert [track.name for track in piece.tracks].count(CONTINUATION_TRACK) == 1  # every round on one track
    assert notes(piece)[:24] == notes(SIX_BARS)  # the composer's bars untouched
    assert notes(piece, CONTINUATION_TRACK)[: len(first_kept)] == first_kept
    assert len(notes(piece, CONTINUATION_TRACK)) > len(first_kept) and len(studio.history) == 2


def test_keeping_a_continuation_of_earlier_bars_replaces_what_followed_and_undo_brings_it_back(studio):
    studio.load(SIX_BARS.dumps_midi(), "six.mid")
    round_of(studio, 2, 4, keep=0)
    assert all(t < 4 * BAR for t, *_ in notes(studio.piece, "piano"))  # bars 5 and 6 gave way to the sample
    assert notes(studio.piece, "piano") == [n for n in notes(SIX_BARS) if n[0] < 4 * BAR]
    studio.undo()
    assert notes(studio.piece) == notes(SIX_BARS) and studio.bars == 6


def test_undo_goes_back_one_keep_at_a_time_down_to_the_loaded_file(studio):
    studio.load(SIX_BARS.dumps_midi(), "six.mid")
    pieces = [notes(studio.piece)]
    for seed in range(2):
        round_of(studio, 1, studio.bars, keep=0, seed=seed)
        pieces.append(notes(studio.piece))
    assert pieces[0] != pieces[1] != pieces[2]
    studio.undo()
    assert notes(studio.piece) == pieces[1]
    studio.undo()
    assert notes(studio.piece) == pieces[0] and studio.bars == 6
    with pytest.raises(CompletionError, match="nothing to undo"):
        studio.undo()
    studio.load(SIX_BARS.dumps_midi(), "again.mid")  # a new file starts a new history
    assert studio.history == []


def test_bad_requests_fail_before_any_work(studio):
    with pytest.raises(CompletionError, match="load a MIDI file first"):
        studio.start(1, 2, Sampling())
    studio.load(SIX_BARS.dumps_midi(), "six.mid")
    with pytest.raises(CompletionError, match="the prompt has 6 bars but bars 5 to 9 were asked for"):
        studio.start(5, 9, Sampling())
    with pytest.raises(CompletionError, match="no sample 0 to keep"):
        studio.keep(0)
    assert studio.job is None


@pytest.fixture
def blocked(studio, monkeypatch):
    """Generation waits for the returned event: the job is running for as long as the test needs."""
    release = threading.Event()
    generate = studio.generate

    def waiting(*args, **kwargs):
        release.wait(60)
        return generate(*args, **kwargs)

    monkeypatch.setattr(studio, "generate", waiting)
    yield release
    release.set()


def test_a_piece_changed_while_generating_drops_the_samples(studio, blocked):
    studio.load(SIX_BARS.dumps_midi(), "six.mid")
    studio.start(1, 6, Sampling(bars=1, samples=2))
    with pytest.raises(CompletionError, match="already running"):
        studio.start(1, 6, Sampling(bars=1, samples=2))
    studio.load(make_piano_score(4, 4, seed=3).dumps_midi(), "other.mid")
    blocked.set()
    assert wait(studio)["state"] == "stale"
    assert studio.candidates == [] and not list(studio.audio_dir.glob("candidate-*"))


def test_the_page_starts_from_the_sampling_defaults(monkeypatch):
    @dataclass(frozen=True)
    class Tuned(Sampling):
        temperature: float = 0.85
        top_p: float = 0.9
        bars: int = 6
        stay_in_key: float = 1.5

    monkeypatch.setattr(studio_module, "Sampling", Tuned)
    defaults = studio_module.defaults()
    assert (defaults["temperature"], defaults["top_p"], defaults["bars"], defaults["stay_in_key"]) == (
        0.85,
        0.9,
        6,
        1.5,
    )


# The HTTP API, with real audio.


@pytest.fixture
def server(completer, renderer, tmp_path):
    studio = Studio(completer, renderer, tmp_path)
    server = make_server(studio)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", studio
    server.shutdown()
    server.server_close()


def request(url: str, data: bytes | None = None, content_type: str = "application/json") -> tuple[int, bytes, dict]:
    headers = {"Content-Type": content_type} if data is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=60) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def api(url: str, payload=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else None if payload is None else json.dumps(payload).encode()
    status, body, _ = request(url, data)
    return status, json.loads(body)


def test_http_upload_generate_keep_undo_download(server, tmp_path):
    base, studio = server
    status, page, headers = request(base + "/")
    assert status == 200 and b"<title>pianomuse studio</title>" in page
    assert headers["Content-Type"].startswith("text/html")
    assert api(base + "/api/state")[1]["piece"] is None

    status, state = api(base + "/api/upload?name=six.mid", raw=SIX_BARS.dumps_midi())
    assert status == 200 and state["piece"]["name"] == "six.mid" and state["piece"]["bars"] == 6
    roll = state["piece"]["roll"]
    assert roll["bars"] == [4.0 * i for i in range(7)] and roll["first_bar"] == 1  # in quarters: 4/4 bars
    assert sorted(zip(roll["onsets"], roll["pitches"])) == [(n[0] / 480, n[2]) for n in notes(SIX_BARS)]
    assert not any(roll["new"])

    settings = {
        "first_bar": 3,
        "last_bar": 6,
        "bars": 2,
        "samples": 2,
        "temperature": 1.0,
        "top_p": 0.95,
        "seed": 5,
        "stay_in_key": 2.0,
    }
    status, state = api(base + "/api/generate", settings)
    assert status == 200 and state["job"]["state"] in ("running", "rendering", "done") and state["job"]["total"] == 4
    for _ in range(2400):  # the page polls /api/job the same way
        job = api(base + "/api/job")[1]["job"]
        if job["state"] not in ("running", "rendering"):
            break
        time.sleep(0.05)
    assert job["state"] == "done" and job["done"] == 4
    state = api(base + "/api/state")[1]
    assert len(state["candidates"]) == 2
    for i, candidate in enumerate(state["candidates"]):
        assert candidate["roll"]["first_bar"] == 3 and candidate["roll"]["split"] == 16.0  # after 4 prompt bars
        assert len(candidate["roll"]["bars"]) == 4 + 2 + 1
        status, wav, headers = request(base + candidate["audio"])
        assert status == 200 and headers["Content-Type"] == "audio/wav"
        (tmp_path / f"c{i}.wav").write_bytes(wav)
        samples, rate = read_wav(tmp_path / f"c{i}.wav")
        assert rate == SAMPLE_RATE and len(samples) / rate >= 6 * 2.0  # six bars of 2 s
        assert np.abs(samples[: int(8 * rate)]).max() > 0.01  # the prompt bars are heard

    kept = studio.candidates[1].piece
    status, state = api(base + "/api/keep", {"index": 1})
    assert status == 200 and state["piece"]["can_undo"] and state["candidates"] == []
    assert state["piece"]["bars"] == studio.bars and any(state["piece"]["roll"]["new"])
    status, midi, headers = request(base + "/download/piece.mid")
    assert status == 200 and headers["Content-Disposition"] == 'attachment; filename="six-pianomuse.mid"'
    downloaded = Score.from_midi(midi)
    # As the kept piece is written to MIDI (where two overlapping notes of one pitch on one channel are cut).
    assert notes(downloaded) == notes(Score.from_midi(kept.dumps_midi())) and notes(downloaded)[:24] == notes(SIX_BARS)
    assert [t.name for t in downloaded.tracks] == ["piano", CONTINUATION_TRACK]
    status, wav, _ = request(base + f"/audio/piece.wav?v={state['piece']['version']}")
    assert status == 200 and wav[:4] == b"RIFF"

    status, state = api(base + "/api/undo", {})
    assert status == 200 and not state["piece"]["can_undo"] and state["piece"]["bars"] == 6
    assert notes(Score.from_midi(request(base + "/download/piece.mid")[1])) == notes(SIX_BARS)


def test_http_errors_are_messages_and_the_server_goes_on(server):
    base, _ = server
    drums = make_piano_score(2, 4, is_drum=True).dumps_midi()
    cases = [
        (base + "/api/upload?name=x.mid", b"not midi at all", 400, "x.mid is not a MIDI file"),
        (base + "/api/upload?name=d.mid", drums, 400, "no piano notes"),
        (base + "/api/generate", json.dumps(GENERATE).encode(), 400, "load a MIDI file first"),
        (base + "/api/keep", b"{}", 400, "keep takes a sample's index"),
        (base + "/api/undo", b"", 400, "nothing to undo"),
        (base + "/nowhere", None, 404, "no such page: /nowhere"),
        (base + "/download/piece.mid", None, 400, "load a MIDI file first"),
    ]
    for url, data, status, message in cases:
        code, body, _ = request(url, data)
        assert code == status and message in json.loads(body)["error"], (url, body)
    api(base + "/api/upload?name=six.mid", raw=SIX_BARS.dumps_midi())
    for settings, message in [
        (b"{not json", "the request is not JSON"),
        (json.dumps({**GENERATE, "last_bar": 9}).encode(), "the prompt has 6 bars but bars 1 to 9 were asked for"),
        (json.dumps({**GENERATE, "temperature": 0}).encode(), "temperature must be greater than 0"),
        (json.dumps({**GENERATE, "stay_in_key": -2}).encode(), "stay-in-key must be a number of at least 0"),
        (json.dumps({**GENERATE, "bars": "two"}).encode(), "must be numbers"),
        (json.dumps({"first_bar": 1, "last_bar": 2}).encode(), "the generate request has no bars"),
    ]:
        code, body, _ = request(base + "/api/generate", settings)
        assert code == 400 and message in json.loads(body)["error"], body
    code, body, _ = request(base + "/api/upload?name=big.mid", bytes(MAX_UPLOAD_BYTES + 1), "audio/midi")
    assert code == 413 and "up to 16 MiB" in json.loads(body)["error"]
    assert api(base + "/api/state")[1]["piece"]["name"] == "six.mid"  # still serving, the piece kept


def test_http_answers_while_a_generation_runs(server, monkeypatch):
    base, studio = server
    release = threading.Event()
    generate = studio.generate
    monkeypatch.setattr(studio, "generate", lambda *a, **k: (release.wait(60), generate(*a, **k))[1])
    api(base + "/api/upload?name=six.mid", raw=SIX_BARS.dumps_midi())
    settings = GENERATE
    assert api(base + "/api/generate", settings)[0] == 200
    # The generation waits; the server answers meanwhile.
    assert api(base + "/api/job")[1]["job"]["state"] == "running"
    assert api(base + "/api/state")[1]["piece"]["bars"] == 6
    code, state = api(base + "/api/generate", settings)
    assert code == 400 and "already running" in state["error"]
    release.set()
    for _ in range(2400):
        if api(base + "/api/job")[1]["job"]["state"] == "done":
            break
        time.sleep(0.05)
    assert len(api(base + "/api/state")[1]["candidates"]) == 1


def test_download_name_is_the_upload_s_made_safe_for_a_header(studio):
    studio.load(SIX_BARS.dumps_midi(), 'my "étude"\r\nX-Evil: 1.mid')
    assert studio.piece_midi()[1] == "my _étude___X-Evil_ 1-pianomuse.mid"


# The command.


def test_cli_studio_serves_until_interrupted(checkpoint, renderer, tmp_path):
    command = [sys.executable, "-m", "pianomuse.cli", "studio", "--checkpoint", str(checkpoint), "--port", "0"]
    # stderr to a file, not a pipe: a kernel build's output could fill an unread pipe and block the server's exit.
    with open(tmp_path / "stderr.txt", "w") as stderr:
        # A test run started in the background (`cmd &`) ignores SIGINT, and a child inherits that: restore the
        # default so that the server gets its KeyboardInterrupt as it does under a terminal.
        restore_sigint = partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, preexec_fn=restore_sigint)
    try:
        line = process.stdout.readline()  # printed once serving
        assert line.startswith("pianomuse studio: http://127.0.0.1:") and "Ctrl-C" in line, (
            tmp_path / "stderr.txt"
        ).read_text()
        status, page, _ = request(line.split()[2])
        assert status == 200 and b"pianomuse studio" in page
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            code = "still running 120 s after Ctrl-C"
    errors = (tmp_path / "stderr.txt").read_text()
    assert code == 0, errors  # Ctrl-C stops it cleanly
    assert "Traceback" not in errors


def test_cli_studio_errors_are_messages(checkpoint, renderer, tmp_path, capsys):
    not_sf2 = tmp_path / "piano.sf2"
    not_sf2.write_text("no")
    assert main(["studio", "--checkpoint", str(checkpoint), "--soundfont", str(not_sf2)]) == 1
    assert "is not a SoundFont 2" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["studio", "--checkpoint", str(checkpoint), "--port", str(taken.getsockname()[1])]) == 1
    assert "cannot serve on 127.0.0.1:" in capsys.readouterr().err
    assert main(["studio", "--checkpoint", str(tmp_path / "absent.pth")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
