"""The `pianomuse` command. `pianomuse complete PROMPT.mid --checkpoint PATH ...` writes K continuations;
`pianomuse probe --checkpoint PATH -o DIR` runs the pattern continuation probe (`pianomuse.probe`);
`pianomuse studio --checkpoint PATH` serves the studio web page (`pianomuse.studio`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pianomuse.audio import AudioError, Renderer
from pianomuse.complete import Completer, CompletionError, Sampling, write_completion
from pianomuse.probe import FIGURE_SETS, probe_checkpoint

USAGE_ERROR = 2
COMPLETION_ERROR = 1
CHECKPOINT_HELP = (
    "a run folder (results/checkpoints/{run}: its best.pth is used), a {name}.pth (RWKV-7 or Transformer) or an "
    "n-gram {name}.npz, with its {name}.json beside it"
)
TOKENIZER_HELP = "the run's tokenizer.json (default: the one beside the checkpoint)"


def add_sampling_arguments(parser: argparse.ArgumentParser, where: str, seed_help: str) -> None:
    """--bars, --samples, --temperature, --top-p, --top-k, --stay-in-key and --seed, defaulting to `Sampling`'s own
    defaults."""
    defaults = Sampling()
    parser.add_argument(
        "--bars", type=int, default=defaults.bars, help=f"bars to generate {where}, M (default: %(default)s)"
    )
    parser.add_argument(
        "--samples", type=int, default=defaults.samples, help="continuations per prompt, K (default: %(default)s)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=defaults.temperature,
        help="sampling temperature, > 0: lower is safer, higher more varied (default: %(default)s)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=defaults.top_p,
        help="nucleus sampling mass, in (0, 1]; 1 keeps all (default: %(default)s)",
    )
    parser.add_argument(
        "--top-k", type=int, default=defaults.top_k, help="sample among the k most likely tokens (default: all)"
    )
    parser.add_argument(
        "--stay-in-key",
        type=float,
        default=defaults.stay_in_key,
        metavar="NATS",
        help="lower every pitch outside the prompt's key by this many nats (log-probability) before sampling: 0 "
        "plays as the model learned, 2 makes an out-of-key note about 7x rarer at temperature 1 (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"{seed_help} (default: %(default)s)")


def sampling_of(args: argparse.Namespace) -> Sampling:
    return Sampling(
        args.bars, args.samples, args.temperature, args.top_p, args.top_k, args.seed, stay_in_key=args.stay_in_key
    )


def add_probe_command(commands: argparse._SubParsersAction) -> None:
    probe = commands.add_parser(
        "probe", help="the pattern continuation probe: does the model keep playing a repeated one-bar figure?"
    )
    probe.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    probe.add_argument("--tokenizer", type=Path, help=TOKENIZER_HELP)
    add_sampling_arguments(probe, "after each prompt", "sampling (prompt i uses seed + i) and bootstrap seed")
    probe.add_argument(
        "--figures",
        choices=list(FIGURE_SETS),
        default="test",
        help="the prompt set: test (the reported measure) or validation (figures of their own, to choose by)"
        " (%(default)s)",
    )
    probe.add_argument("--device", default="cpu", help="cpu, cuda or auto (%(default)s)")
    probe.add_argument("--threads", type=int, default=1, help="CPU threads (%(default)s)")
    probe.add_argument(
        "-o", "--output", type=Path, required=True, help="folder for probe.json, probe.md/.html and the prompts' files"
    )


def add_studio_command(commands: argparse._SubParsersAction) -> None:
    studio = commands.add_parser(
        "studio",
        help="a local web page: load a MIDI file, hear K continuations side by side, keep one, go on",
        description="Serve the studio, a web page on this machine: load a MIDI file, see its piano roll, pick the "
        "prompt bars, M, K, temperature and top-p, hear and see K continuations side by side, keep one and continue "
        "from it, undo, and download the piece so far as MIDI. Audio needs fluidsynth and a General MIDI soundfont.",
    )
    studio.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    studio.add_argument("--tokenizer", type=Path, help=TOKENIZER_HELP)
    studio.add_argument("--soundfont", type=Path, help="the General MIDI .sf2 (default: the system's)")
    studio.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s: this machine)")
    studio.add_argument("--port", type=int, default=8765, help="port; 0: any free one (default: %(default)s)")
    studio.add_argument("--device", default="cpu", help="torch device to decode on, e.g. cuda (default: %(default)s)")
    studio.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pianomuse", description="Piano completion with RWKV-7.")
    commands = parser.add_subparsers(dest="command", required=True)
    complete = commands.add_parser(
        "complete",
        help="continue the bars of a MIDI prompt K ways",
        description="Continue the prompt bars of a MIDI file K ways, M bars each. Writes sample-{i}.mid (the "
        "file's own prompt bars, untouched, then the continuation on a track of its own), "
        "sample-{i}.continuation.mid and a piano roll sample-{i}.png per sample (and sample-{i}.wav with --audio).",
    )
    complete.add_argument("prompt", type=Path, help="MIDI file holding the prompt")
    complete.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    complete.add_argument("--tokenizer", type=Path, help=TOKENIZER_HELP)
    complete.add_argument("--prompt-bars", type=int, help="prompt = the first N bars (default: the whole file)")
    complete.add_argument("--from-bar", type=int, help="prompt = bars I to J, counted from 1, both included")
    complete.add_argument("--to-bar", type=int, help="the last bar J of the prompt (with --from-bar)")
    add_sampling_arguments(complete, "after the prompt", "random seed: the same seed gives the same samples")
    complete.add_argument("--device", default="cpu", help="torch device to decode on, e.g. cuda (default: %(default)s)")
    complete.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default: %(default)s; threads wait on each other on a busy machine, more help on an idle "
        "one)",
    )
    complete.add_argument("-o", "--output", type=Path, required=True, help="folder for the MIDI, PNG (and WAV) files")
    complete.add_argument(
        "--audio", action="store_true", help="also render each sample to sample-{i}.wav (FluidSynth, a GM soundfont)"
    )
    complete.add_argument(
        "--soundfont", type=Path, help="the General MIDI .sf2 for --audio (default: the system's, e.g. FluidR3_GM)"
    )

    add_probe_command(commands)
    add_studio_command(commands)
    args = parser.parse_args(argv)
    if args.command != "complete":
        return args
    if args.prompt_bars is not None and (args.from_bar is not None or args.to_bar is not None):
        parser.error("give either --prompt-bars or --from-bar/--to-bar, not both")
    if (args.from_bar is None) != (args.to_bar is None):
        parser.error("--from-bar and --to-bar go together")
    if args.soundfont is not None and not args.audio:
        parser.error("--soundfont is for --audio")
    return args


def complete(args: argparse.Namespace) -> None:
    prompt_bars = args.prompt_bars if args.from_bar is None else (args.from_bar, args.to_bar)
    if not args.prompt.is_file():
        raise CompletionError(f"prompt file not found: {args.prompt}")
    sampling = sampling_of(args)
    renderer = Renderer(args.soundfont) if args.audio else None  # before any work: a missing soundfont fails first
    torch.set_num_threads(args.threads)
    completer = Completer.load(args.checkpoint, args.tokenizer, args.device)
    completion = completer.complete(args.prompt, prompt_bars, sampling)
    write_completion(completion, args.output, renderer)
    for i, summary in enumerate(completion.summaries):
        print(f"sample-{i}: {summary.notes} notes, {summary.bars} bars, {summary.seconds:.1f} s")


def probe(args: argparse.Namespace) -> None:
    sampling = sampling_of(args)
    torch.set_num_threads(args.threads)
    results = probe_checkpoint([args.checkpoint], args.tokenizer, sampling, args.device, args.output, args.figures)
    for name, (mean, low, high, n) in results["summary"].items():
        print(f"{name}: {mean:.3f} [{low:.3f}, {high:.3f}] over {n} prompts")
    print(f"report: {args.output / 'probe.md'}")


def studio(args: argparse.Namespace) -> None:
    from pianomuse.studio import serve  # the web server's imports only for this command

    renderer = Renderer(args.soundfont)
    torch.set_num_threads(args.threads)
    serve(Completer.load(args.checkpoint, args.tokenizer, args.device), renderer, args.host, args.port)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        {"complete": complete, "probe": probe, "studio": studio}[args.command](args)
    except (CompletionError, AudioError) as error:
        print(f"pianomuse: error: {error}", file=sys.stderr)
        return COMPLETION_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
