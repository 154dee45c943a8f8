"""The evaluation report: piano rolls, and report.md / report.html rendered from the same tables."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def piano_roll(score, continuation_tick: int, path: Path, title: str) -> None:
    """Notes as horizontal bars, pitch against time in quarter notes; a vertical line where the continuation starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(12, 4))
    for track in score.tracks:
        notes = track.notes.numpy()  # one barh call for all notes: per-note calls are slow for a dense piece
        colors = np.where(notes["time"] >= continuation_tick, "tab:orange", "tab:blue")
        axes.barh(notes["pitch"], notes["duration"] / score.tpq, left=notes["time"] / score.tpq, height=0.8, color=colors)
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
    rows: list[list[str]]  # plain text cells, or ("image", path) pairs for pictures


def number(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def interval(summary: list) -> str:
    """`mean [low, high] (n=…)` from mean_and_ci's tuple."""
    mean, low, high, n = summary
    return f"{number(mean)} [{number(low)}, {number(high)}] (n={n})"


def prompt_name(prompt: dict) -> str:
    return f"{prompt['piece_id']} from bar {prompt['start_bar'] + 1}"


def report_tables(results: dict) -> list[Table]:
    nll = results["nll"]
    tables = [
        Table(
            "Completion NLL",
            f"test windows: {nll['windows']}, completion tokens: {nll['tokens']}, notes: {nll['notes']} "
            "(nats; per note = the completion tokens' total NLL / their notes)",
            ["model", "NLL per token", "NLL per note"],
            [[name, number(v["per_token"]), number(v["per_note"])] for name, v in nll["models"].items()],
        )
    ]
    systems = list(results["metrics"])
    metric_names = list(results["metrics"][systems[0]])
    bars = results["continuation_bars"]
    tables.append(
        Table(
            "Musical metrics against the true continuation",
            "mean [95% bootstrap interval] (n = values; a ratio against a truth with no notes, or fewer than two "
            "onsets, is undefined and left out); perfect: 1 for overlaps, similarities, ratios and scale consistency, "
            f"0 for the pitch range difference. Baselines: the prompt's last {bars} bars played again (the whole "
            f"prompt cycled when it has fewer bars), and the {bars} bars that follow a test prompt of another piece",
            ["metric", *systems],
            [[name, *(interval(results["metrics"][s][name]) for s in systems)] for name in metric_names],
        )
    )
    tables.append(
        Table(
            "Prompts and samples",
            "bars counted in the sampled ids (a MIDI file keeps no trailing empty bar); token errors: miditok's "
            "tokens_errors of prompt + continuation, the share of tokens that may not follow the ones before (0: none)",
            ["prompt", "prompt bars", "bars per sample", "token errors per sample"],
            [
                [
                    prompt_name(p), str(p["prompt_bars"]), ", ".join(map(str, p["sample_bars"])),
                    ", ".join(f"{errors:g}" for errors in p["sample_token_errors"]),
                ]
                for p in results["prompts"]
            ],
        )
    )
    tables.append(
        Table(
            "Piano rolls",
            "blue: the prompt, orange: the continuation",
            ["prompt", "model sample 0", "true continuation"],
            [
                [prompt_name(p), ("image", p["sample_png"]), ("image", p["truth_png"])]
                for p in results["prompts"]
            ],
        )
    )
    return tables


def markdown_cell(cell) -> str:
    if isinstance(cell, tuple):
        return f"![{Path(cell[1]).stem}]({cell[1]})"
    return str(cell).replace("|", "\\|")


def html_cell(cell) -> str:
    if isinstance(cell, tuple):
        return f'<img src="{html.escape(cell[1])}" width="480" alt="{html.escape(Path(cell[1]).stem)}">'
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
