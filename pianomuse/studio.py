"""`pianomuse studio`: a local web page for composing with a checkpoint, one round at a time.

The composer loads a MIDI file, picks prompt bars I..J, M, K, temperature and top-p, and gets K continuations side by
side (piano roll and audio each). Keeping one makes the piece its bars 1..J followed by that continuation (on the
`pianomuse continuation` track, one for every kept round), and the next round continues from there; undo goes back
one keep; the piece so far downloads as MIDI.

`Studio` holds that editing state and does the work; `make_server` puts it behind a small JSON API on the standard
library's threading HTTP server, with the page itself (studio.html, plain HTML and JavaScript: piano rolls drawn on
canvases) at `/`. One generation runs at a time, on a worker thread, so requests (the page's progress polls among
them) are answered while it runs. The sampling defaults the page starts from are `Sampling()`'s.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from symusic import Score

from pianomuse.audio import Renderer
from pianomuse.complete import (
    CONTINUATION_TRACK,
    Completer,
    CompletionError,
    Sampling,
    after_prompt,
    bar_start_ticks,
    prompt_range,
)
from pianomuse.remi import RejectedPiece, tokenize_score

STUDIO_SAMPLES = 3  # K on a fresh page: three rolls side by side fit a laptop's screen
STUDIO_PROMPT_BARS = 8  # the prompt on a fresh page: the piece's last bars, up to this many
MAX_UPLOAD_BYTES = 16 * 2**20  # MAESTRO's longest performance is under 1 MiB of MIDI


@dataclass(frozen=True)
class Candidate:
    """One continuation: `heard` is prompt bars I..J then the continuation (what the page plays and draws, from bar I);
    `piece` is the piece's bars 1..J then the continuation (what keeping it makes)."""

    heard: Score
    piece: Score
    continuation_tick: int  # in `heard`
    first_bar: int  # the number (from 1) of `heard`'s first bar in the piece
    bars: int  # of `heard`: the prompt's and M
    notes: int  # in the continuation


@dataclass
class Job:
    """The latest generation: its state ("running", "rendering", "done", "failed" or "stale": the piece changed while
    it ran, so its samples were dropped), bars finished of `total`, and the error of a failed one."""

    number: int
    total: int
    state: str = "running"
    done: int = 0
    error: str | None = None


def continue_piece(piece: Score, tick: int, continuation: Score) -> Score:
    """The piece up to `tick` followed by the continuation, every kept continuation on one track."""
    joined, _ = after_prompt(piece.clip(0, tick, clip_end=False), tick, continuation)
    kept = [i for i, track in enumerate(joined.tracks) if track.name == CONTINUATION_TRACK]
    if len(kept) > 1:  # after_prompt put this round's notes on a track of their own, last
        first, new = joined.tracks[kept[0]], joined.tracks[kept[-1]]
        # The new notes start at `tick`, the kept ones before it: appended, they stay in time order.
        first.notes.extend(list(new.notes))
        first.pedals.extend(list(new.pedals))
        del joined.tracks[kept[-1]]
    return joined


def piano_roll_data(score: Score, bars: int, first_bar: int, new_from_tick: int | None = None) -> dict:
    """What the page draws: notes (onset, duration, pitch; `new` marks a continuation's notes: from `new_from_tick`,
    else those on the continuation track) and the start of each of `bars` bars and of the bar after, in quarters."""
    onsets, durations, pitches, new = [], [], [], []
    for track in score.tracks:
        notes = track.notes.numpy()
        onsets += (notes["time"] / score.tpq).round(4).tolist()
        durations += (notes["duration"] / score.tpq).round(4).tolist()
        pitches += notes["pitch"].tolist()
        if new_from_tick is None:
            new += [track.name == CONTINUATION_TRACK] * len(notes["time"])
        else:
            new += (notes["time"] >= new_from_tick).tolist()
    return {
        "onsets": onsets,
        "durations": durations,
        "pitches": pitches,
        "new": new,
        "bars": [round(tick / score.tpq, 4) for tick in bar_start_ticks(score, bars)],
        "first_bar": first_bar,
        "split": None if new_from_tick is None else round(new_from_tick / score.tpq, 4),
    }


class Studio:
    """One composer's piece: the piece so far, its undo history, the latest candidates and generation, and their
    audio. Every method may be called from any thread."""

    def __init__(self, completer: Completer, renderer: Renderer, audio_dir: str | Path):
        self.completer = completer
        self.renderer = renderer
        self.audio_dir = Path(audio_dir)
        self.lock = threading.Lock()
        self.name: str | None = None
        self.piece: Score | None = None
        self.bars = 0
        self.history: list[tuple[Score, int]] = []  # (piece, bars) before each keep
        self.candidates: list[Candidate] = []
        self.version = 0  # changes with the piece: audio files and a running job belong to one version
        self.job: Job | None = None

    # Editing

    def count_bars(self, score: Score, name: str) -> int:
        """The bars the model reads in `score` (tokenized as a prompt); a file it cannot read is a CompletionError."""
        try:
            _, bar_offsets, _ = tokenize_score(self.completer.tokenizer, score.copy())  # it merges the tracks in place
        except RejectedPiece as rejected:
            raise CompletionError(f"{name} cannot be continued: {rejected.reason}") from rejected
        return len(bar_offsets)

    def load(self, data: bytes, name: str) -> None:
        """A MIDI file's bytes become the piece (the history and candidates are dropped)."""
        try:
            score = Score.from_midi(data)
        except Exception as error:
            raise CompletionError(f"{name} is not a MIDI file ({error})") from error
        bars = self.count_bars(score, name)
        with self.lock:
            self.name, self.piece, self.bars = name, score, bars
            self.history, self.candidates = [], []
            self.changed()

    def keep(self, index: int) -> None:
        """Candidate `index` becomes the piece; undo brings the piece before it back."""
        with self.lock:
            if not 0 <= index < len(self.candidates):
                raise CompletionError(f"there is no sample {index} to keep ({len(self.candidates)} on the page)")
            piece = self.candidates[index].piece
            bars = self.count_bars(piece, self.name)
            self.history.append((self.piece, self.bars))
            self.piece, self.bars = piece, bars
            self.candidates = []
            self.changed()

    def undo(self) -> None:
        with self.lock:
            if not self.history:
                raise CompletionError("nothing to undo: no sample has been kept since the file was loaded")
            self.piece, self.bars = self.history.pop()
            self.candidates = []
            self.changed()

    def changed(self) -> None:
        """The piece changed (under the lock): a new version, so that its old audio and running job go stale."""
        self.version += 1
        for path in self.audio_dir.glob("*.wav"):
            path.unlink()

    # Generating

    def start(self, first_bar: int, last_bar: int, sampling: Sampling) -> Job:
        """Generate K continuations of bars `first_bar`..`last_bar` (from 1) on a worker thread; the returned job
        tells how far it is. Bad settings fail here, before the thread starts."""
        with self.lock:
            if self.piece is None:
                raise CompletionError("load a MIDI file first")
            if self.job is not None and self.job.state in ("running", "rendering"):
                raise CompletionError("a generation is already running: wait for it to finish")
            prompt_range((first_bar, last_bar), self.bars)
            job = Job(number=(self.job.number + 1) if self.job else 1, total=sampling.samples * sampling.bars)
            self.job, self.candidates = job, []  # the last round's samples go: they continued other bars
            piece, version = self.piece, self.version
        threading.Thread(
            target=self.run, args=(job, piece, version, (first_bar, last_bar), sampling), daemon=True, name="generate"
        ).start()
        return job

    def run(self, job: Job, piece: Score, version: int, prompt_bars: tuple[int, int], sampling: Sampling) -> None:
        audio = [self.audio_dir / f"candidate-{version}-{i}.wav" for i in range(sampling.samples)]
        try:
            candidates = self.generate(piece, prompt_bars, sampling, lambda done: setattr(job, "done", done))
            job.state = "rendering"
            for candidate, path in zip(candidates, audio, strict=True):
                self.renderer.write_wav(candidate.heard, path)
        except Exception as error:  # the page shows it, and the server goes on
            job.error = str(error) if isinstance(error, CompletionError) else f"{type(error).__name__}: {error}"
            job.state = "failed"
            return
        with self.lock:
            if self.version != version:
                job.state = "stale"
                for path in audio:
                    path.unlink(missing_ok=True)
                return
            self.candidates = candidates
            job.state = "done"

    def generate(
        self,
        piece: Score,
        prompt_bars: tuple[int, int],
        sampling: Sampling,
        on_bars: Callable[[int], None] | None = None,
    ) -> list[Candidate]:
        """K candidates continuing bars I..J of `piece` (no state is changed)."""
        completion = self.completer.complete(piece, prompt_bars, sampling, progress=False, on_bars=on_bars)
        first, end = prompt_bars[0] - 1, prompt_bars[1]
        bars = bar_start_ticks(piece, end)
        return [
            Candidate(
                heard=heard,
                piece=continue_piece(piece, bars[end], alone),
                continuation_tick=completion.continuation_tick,
                first_bar=first + 1,
                bars=end - first + sampling.bars,
                notes=summary.notes,
            )
            for heard, alone, summary in zip(
                completion.full, completion.continuations, completion.summaries, strict=True
            )
        ]

    # What the page reads

    def state(self) -> dict:
        with self.lock:
            job = None if self.job is None else dataclasses.asdict(self.job)
            if self.piece is None:
                return {"piece": None, "job": job, "defaults": defaults()}
            return {
                "piece": {
                    "name": self.name,
                    "bars": self.bars,
                    "version": self.version,
                    "roll": piano_roll_data(self.piece, self.bars, 1),
                    "can_undo": bool(self.history),
                    "kept": len(self.history),
                },
                "candidates": [
                    {
                        "notes": c.notes,
                        "roll": piano_roll_data(c.heard, c.bars, c.first_bar, new_from_tick=c.continuation_tick),
                        "audio": f"/audio/candidate-{i}.wav?v={self.version}",
                    }
                    for i, c in enumerate(self.candidates)
                ],
                "job": job,
                "defaults": defaults(),
            }

    def job_state(self) -> dict | None:
        with self.lock:
            return None if self.job is None else dataclasses.asdict(self.job)

    def piece_midi(self) -> tuple[bytes, str]:
        """The piece so far as MIDI bytes, and a file name for it."""
        with self.lock:
            if self.piece is None:
                raise CompletionError("load a MIDI file first")
            stem = "".join(c if c.isalnum() or c in "._- " else "_" for c in Path(self.name).stem)  # a safe header
            return self.piece.dumps_midi(), f"{stem}-pianomuse.mid"

    def audio(self, what: str) -> Path:
        """The WAV of the piece ("piece", rendered on first request) or of a candidate ("candidate-{i}")."""
        index = what.removeprefix("candidate-")
        with self.lock:
            if what == "piece" and self.piece is not None:
                path, score = self.audio_dir / f"piece-{self.version}.wav", self.piece
            elif index.isdigit() and int(index) < len(self.candidates):
                return self.audio_dir / f"candidate-{self.version}-{int(index)}.wav"  # rendered with the candidates
            else:
                raise CompletionError(f"there is no {what} to play")
        if not path.is_file():
            self.renderer.write_wav(score, path)  # outside the lock: the page's other requests go on meanwhile
        return path


def defaults() -> dict:
    """What a fresh page starts from: `Sampling()`'s M, temperature, top-p and stay-in-key, the studio's K and prompt
    length."""
    sampling = Sampling()
    return {
        "bars": sampling.bars,
        "samples": STUDIO_SAMPLES,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "stay_in_key": sampling.stay_in_key,
        "seed": sampling.seed,
        "prompt_bars": STUDIO_PROMPT_BARS,
    }


def settings_of(body: dict) -> tuple[int, int, Sampling]:
    """(first bar, last bar, Sampling) from a generate request's JSON; a missing or non-numeric field is an error."""
    try:
        first, last = int(body["first_bar"]), int(body["last_bar"])
        sampling = Sampling(
            bars=int(body["bars"]),
            samples=int(body["samples"]),
            temperature=float(body["temperature"]),
            top_p=float(body["top_p"]),
            seed=int(body["seed"]),
            stay_in_key=float(body["stay_in_key"]),
        )
    except KeyError as missing:
        raise CompletionError(f"the generate request has no {missing.args[0]}") from missing
    except (TypeError, ValueError) as error:
        raise CompletionError(f"the generate request's settings must be numbers ({error})") from error
    return first, last, sampling


def json_body(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except ValueError as error:
        raise CompletionError(f"the request is not JSON ({error})") from error
    if not isinstance(value, dict):
        raise CompletionError("the request is not a JSON object")
    return value


class Handler(BaseHTTPRequestHandler):
    """The page and its JSON API. Errors are JSON {"error": message} with a 4xx status, and the server goes on."""

    studio: Studio  # set on the subclass `make_server` makes

    def do_GET(self) -> None:
        self.answer(self.get)

    def do_POST(self) -> None:
        self.answer(self.post)

    def answer(self, route: Callable[[str, dict], None]) -> None:
        url = urlsplit(self.path)
        try:
            route(url.path, parse_qs(url.query))
        except CompletionError as error:
            self.send_json({"error": str(error)}, HTTPStatus.BAD_REQUEST)
        except LookupError:
            self.send_json({"error": f"no such page: {url.path}"}, HTTPStatus.NOT_FOUND)
        except Exception as error:  # a bug of ours: the page says so, and the server goes on
            message = f"internal error: {type(error).__name__}: {error}"
            self.send_json({"error": message}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def get(self, path: str, query: dict) -> None:
        if path == "/":
            page = resources.files("pianomuse").joinpath("studio.html").read_bytes()
            self.send_bytes(page, "text/html; charset=utf-8")
        elif path == "/api/state":
            self.send_json(self.studio.state())
        elif path == "/api/job":
            self.send_json({"job": self.studio.job_state()})
        elif path.startswith("/audio/") and path.endswith(".wav"):
            wav = self.studio.audio(path.removeprefix("/audio/").removesuffix(".wav"))
            try:
                data = wav.read_bytes()
            except FileNotFoundError:  # the piece changed meanwhile: the page asks for the new version's
                raise LookupError(path) from None
            self.send_bytes(data, "audio/wav")
        elif path == "/download/piece.mid":
            data, name = self.studio.piece_midi()
            self.send_bytes(data, "audio/midi", {"Content-Disposition": f'attachment; filename="{name}"'})
        else:
            raise LookupError(path)

    def post(self, path: str, query: dict) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD_BYTES:
            # Read and dropped: a browser reads the answer only once it has sent the whole body.
            for start in range(0, length, 2**20):
                self.rfile.read(min(2**20, length - start))
            limit = MAX_UPLOAD_BYTES // 2**20
            message = f"the file is {length / 2**20:.1f} MiB; the studio takes MIDI files up to {limit} MiB"
            self.send_json({"error": message}, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return
        body = self.rfile.read(length)
        if path == "/api/upload":
            self.studio.load(body, query.get("name", ["upload.mid"])[0])
        elif path == "/api/generate":
            self.studio.start(*settings_of(json_body(body)))
        elif path == "/api/keep":
            index = json_body(body).get("index")
            if not isinstance(index, int):
                raise CompletionError(f"keep takes a sample's index, not {index!r}")
            self.studio.keep(index)
        elif path == "/api/undo":
            self.studio.undo()
        else:
            raise LookupError(path)
        self.send_json(self.studio.state())

    def send_json(self, value: object, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_bytes(json.dumps(value).encode(), "application/json", status=status)

    def send_bytes(
        self, data: bytes, content_type: str, headers: dict | None = None, status: HTTPStatus = HTTPStatus.OK
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the page polls several times a second."""


def make_server(studio: Studio, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A server for `studio` (not yet serving: call serve_forever); port 0 takes a free one."""
    handler = type("StudioHandler", (Handler,), {"studio": studio})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(completer: Completer, renderer: Renderer, host: str, port: int) -> None:
    """Serve the studio until interrupted (Ctrl-C)."""
    with tempfile.TemporaryDirectory(prefix="pianomuse-studio-") as audio_dir:
        try:
            server = make_server(Studio(completer, renderer, audio_dir), host, port)
        except OSError as error:
            raise CompletionError(f"cannot serve on {host}:{port} ({error.strerror}): pass another --port") from error
        print(f"pianomuse studio: http://{host}:{server.server_address[1]}/ (Ctrl-C stops it)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
