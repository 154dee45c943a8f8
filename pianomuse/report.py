"""The evaluation report: piano rolls, and report.md / report.html rendered from the same tables."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from symusic import Score


def piano_roll(score: Score, continuation_tick: int, path: Path, title: str) -> None:
    """Notes as horizontal bars, pitch against time in quarter notes; a vertical line where the continuation starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(12, 4))
    for track in score.tracks:
        notes = track.notes.numpy()  # one barh call for all notes: per-note calls are slow for a dense piece
        colors = np.where(notes["time"] >= continuation_tick, "tab:orange", "tab:blue")
        axes.barh(
            notes["pitch"], notes["duration"] / score.tpq, left=notes["time"] / score.tpq, height=0.8, color=colors
        )
    axes.axvline(continuation_tick / score.tpq, color="black", linestyle="--", label="continuation starts")
    axes.set(xlabel="time (quarter notes)", ylabel="MIDI pitch", title=title)
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


STYLE = "body{font-family:sans-serif} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:4px 8px}"


@dataclass(frozen=True)
class Table:
    title: str
    note: str  # one line under the title: what the numbers are
    header: list[str]
    rows: list[list[str]]  # plain text cells, ("image", path) pairs for pictures, ("audio", path) for sound


def number(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def interval(summary: list) -> str:
    """`mean [low, high] (n=…)` from mean_and_ci's tuple."""
    mean, low, high, n = summary
    return f"{number(mean)} [{number(low)}, {number(high)}] (n={n})"


def slug(name: str) -> str:
    """A system's name as a file or folder name: "RWKV-7" -> "rwkv-7"."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def prompt_name(prompt: dict) -> str:
    return f"{prompt['piece_id']} from bar {prompt['start_bar'] + 1}"


def system_row(label: str, summaries: dict, systems: list[str]) -> list[str]:
    return [label, *(interval(summaries[s]) for s in systems)]


def nll_tables(nll: dict) -> list[Table]:
    systems = list(nll["systems"])
    counted = (
        f"the true continuations of {nll['windows']} test windows ({nll['tokens']} tokens, {nll['notes']} notes); "
        "nats, mean [95% bootstrap interval over windows] (n = windows)"
    )
    return [
        Table(
            "Completion NLL per token",
            f"{counted}; the total NLL of the completion tokens over their number",
            ["measure", *systems],
            [system_row("NLL per token", {s: nll["systems"][s]["per_token"] for s in systems}, systems)],
        ),
        Table(
            "Completion NLL per note",
            f"{counted}; the total NLL of the completion tokens over the notes they hold (one Pitch token each), "
            "so that models over other tokenizations compare",
            ["measure", *systems],
            [system_row("NLL per note", {s: nll["systems"][s]["per_note"] for s in systems}, systems)],
        ),
    ]


def sampling_words(settings: dict) -> str:
    """How samples were drawn, in words: temperature, top-p, top-k and, where it is on, the stay-in-key strength."""
    words = f"temperature {settings['temperature']}, top-p {settings['top_p']}, top-k {settings['top_k'] or 'all'}"
    if settings.get("stay_in_key"):
        words += f", stay-in-key {settings['stay_in_key']} nats"
    return words


def probe_tables(probe: dict, image_root: str) -> list[Table]:
    """The pattern probe's tables; `image_root` leads from the report's folder to the probe's."""
    systems, settings = probe["systems"], probe["settings"]
    prompts = probe["prompts"]
    summary_rows = [system_row(f"all {len(prompts)} prompts", probe["summary"], systems)] + [
        system_row(texture, summaries, systems) for texture, summaries in probe["by_texture"].items()
    ]
    return [
        Table(
            "Pattern continuation probe",
            f"each prompt: a one-bar figure played {probe['prompt_bars']} times, continued for M = {settings['bars']} "
            f"bars x K = {settings['samples']} samples ({sampling_words(settings)}, seed {settings['seed']} + prompt "
            "number); "
            "score: F1 of the (sixteenth-note onset slot, pitch) pairs of each continuation bar against the figure's, "
            "mean over bars (1 = keeps the figure); mean [95% bootstrap interval over prompts] (n = prompts). "
            "References: the figure played on (must be 1), a semitone up, another prompt's figure in the same meter",
            ["prompts", *systems],
            summary_rows,
        ),
        Table(
            "Pattern continuation probe, per prompt",
            "mean [95% bootstrap interval over samples] (n = samples)",
            ["prompt", "key", "meter", *systems],
            [
                [p["name"], p["key"], p["time_signature"], *(interval(p["summary"][s]) for s in systems)]
                for p in prompts
            ],
        ),
        Table(
            "Pattern continuation probe: piano rolls",
            "blue: the prompt, orange: sample 0's continuation",
            ["prompt", *(f"{s} sample 0" for s in probe["sampled"])],
            [[p["name"], *(("image", image_root + p["rolls"][s]) for s in probe["sampled"])] for p in prompts],
        ),
    ]


def key_agreement_table(agreement: dict, sampling: dict) -> Table:
    return Table(
        "Key agreement with the prompt",
        f"samples drawn at {sampling_words(sampling)}; share of each continuation's notes whose pitch class lies "
        "in the prompt's key (the major or minor key whose Krumhansl-Kessler profile correlates best with the "
        "prompt's duration-weighted pitch classes; its major or natural minor scale); chance: 7/12 = 0.583; the "
        "true continuation scored the same way. mean [95% bootstrap interval] (n = continuations)",
        ["measure", *agreement],
        [system_row("key agreement", agreement, list(agreement))],
    )


def metrics_table(metrics: dict, bars: int) -> Table:
    systems = list(metrics)
    metric_names = list(metrics[systems[0]])
    return Table(
        "Musical metrics against the true continuation",
        "mean [95% bootstrap interval] (n = values; a ratio against a truth with no notes, or fewer than two "
        "onsets, is undefined and left out); perfect: 1 for overlaps, similarities, ratios and scale consistency, "
        f"0 for the pitch range difference. Baselines: the prompt's last {bars} bars played again (the whole "
        f"prompt cycled when it has fewer bars), and the {bars} bars that follow a test prompt of another piece",
        ["metric", *systems],
        [[name, *(interval(metrics[s][name]) for s in systems)] for name in metric_names],
    )


def prompts_table(prompts: list[dict], sampled: list[str]) -> Table:
    def row(p: dict) -> list[str]:
        per_system = [
            [", ".join(map(str, p["samples"][s]["bars"])), ", ".join(f"{e:g}" for e in p["samples"][s]["token_errors"])]
            for s in sampled
        ]
        return [
            prompt_name(p),
            p["prompt_key"] or "none",
            str(p["prompt_bars"]),
            *(c for cells in per_system for c in cells),
        ]

    return Table(
        "Prompts and samples",
        "bars counted in the sampled ids (a MIDI file keeps no trailing empty bar); token errors: miditok's "
        "tokens_errors of prompt + continuation, the share of tokens that may not follow the ones before (0: none)",
        [
            "prompt",
            "prompt key",
            "prompt bars",
            *(f"{s}: {what}" for s in sampled for what in ["bars per sample", "token errors per sample"]),
        ],
        [row(p) for p in prompts],
    )


def piano_rolls_table(prompts: list[dict], sampled: list[str]) -> Table:
    return Table(
        "Piano rolls",
        "blue: the prompt, orange: the continuation",
        ["prompt", *(f"{s} sample 0" for s in sampled), "true continuation"],
        [
            [prompt_name(p), *(("image", p["samples"][s]["png"]) for s in sampled), ("image", p["truth_png"])]
            for p in prompts
        ],
    )


def report_tables(results: dict) -> list[Table]:
    tables = nll_tables(results["nll"])
    tables.append(key_agreement_table(results["key_agreement"], results["sampling"]))
    tables.append(metrics_table(results["metrics"], results["continuation_bars"]))
    if "probe" in results:
        tables += probe_tables(results["probe"], results["probe_dir"] + "/")
    tables.append(prompts_table(results["prompts"], results["sampled"]))
    tables.append(piano_rolls_table(results["prompts"], results["sampled"]))
    if results["prompts"] and "truth_wav" in results["prompts"][0]:
        tables.append(audio_table(results["prompts"], results["sampled"]))
    return tables


def audio_table(prompts: list[dict], sampled: list[str]) -> Table:
    """Every sample and every truth, to play: each the prompt followed by its continuation."""
    samples = len(prompts[0]["samples"][sampled[0]]["wav"])
    return Table(
        "Listen",
        "each the prompt followed by its continuation, rendered with a General MIDI piano soundfont",
        ["prompt", *(f"{s} sample {i}" for s in sampled for i in range(samples)), "true continuation"],
        [
            [
                prompt_name(p),
                *(("audio", wav) for s in sampled for wav in p["samples"][s]["wav"]),
                ("audio", p["truth_wav"]),
            ]
            for p in prompts
        ],
    )


def markdown_cell(cell: str | tuple[str, str]) -> str:
    if isinstance(cell, tuple):
        kind, path = cell
        return f"![{Path(path).stem}]({path})" if kind == "image" else f"[{Path(path).name}]({path})"
    return str(cell).replace("|", "\\|")


def html_cell(cell: str | tuple[str, str]) -> str:
    if isinstance(cell, tuple):
        kind, path = cell
        if kind == "audio":
            return f'<audio controls preload="none" src="{html.escape(path)}"></audio>'
        return f'<img src="{html.escape(path)}" width="480" alt="{html.escape(Path(path).stem)}">'
    return html.escape(str(cell))


def render_markdown(title: str, tables: list[Table]) -> str:
    lines = [f"# {title}", ""]
    for table in tables:
        lines += [f"## {table.title}", "", table.note, ""]
        lines.append("| " + " | ".join(table.header) + " |")
        lines.append("|" + "---|" * len(table.header))
        lines += ["| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in table.rows]
        lines.append("")
    return "\n".join(lines)


def render_html(title: str, tables: list[Table]) -> str:
    parts = [
        "<!DOCTYPE html>",
        f'<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for table in tables:
        parts += [f"<h2>{html.escape(table.title)}</h2>", f"<p>{html.escape(table.note)}</p>", "<table>"]
        parts.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html_cell(c)}</td>" for c in row) + "</tr>" for row in table.rows]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results: dict, out_dir: Path) -> None:
    title = f"pianomuse evaluation: run {results['run']}"
    tables = report_tables(results)
    (out_dir / "report.md").write_text(render_markdown(title, tables))
    (out_dir / "report.html").write_text(render_html(title, tables))
