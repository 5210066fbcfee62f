"""The `tlama` command: `fit` (a LightningCLI YAML run) and the small tools around a run.

    tlama fit [--config run.yaml] [--key value ...]       train (tlama fit --help lists every key)
    tlama generate --checkpoint PATH --prompt TEXT         sample text from any weights
    tlama evaluate --model PATH --data PATH               loss, perplexity, bits/char (JSON on stdout)
    tlama prepare --data PATH_OR_GLOB --tokenizer T --out DIR [--shard I --num_shards N]   tokenize ahead
    tlama prepare --verify DIR                             check shards against their sidecars' hashes
    tlama tokenizer train --input DATA... --vocab_size N --output PATH [--kind sentencepiece|hf-bpe]
    tlama plot LOG.csv [-o loss.png]                       loss and learning rate against the step
    tlama convert to-hf --checkpoint PATH --out DIR        any weights as a Hugging Face Llama directory
    tlama convert from-hf --model DIR --out DIR            Hugging Face weights as our safetensors

Each tool is a plain function (`generate`, `plot_log`, `convert_to_hf`, ...) that this module parses flags for;
heavy imports (torch, Lightning) happen only inside the command that needs them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from tlama_core import __version__
from tlama_core.atomic import DiskFullError
from tlama_core.locks import LockError

WEIGHTS_HELP = ("Weights: a .ckpt file, a checkpoints directory (its newest step checkpoint), a safetensors "
                "directory (convert from-hf) or a Hugging Face Llama directory.")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `tlama` console script; `argv` defaults to sys.argv[1:]."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fit"]:  # LightningCLI builds its own parser
        from tlama_core.cli.fit import fit

        fit(argv[1:])
        return
    parser, commands = build_parser()
    cfg = parser.parse_args(argv)
    path = [cfg.command]
    while "subcommand" in cfg[".".join(path)]:
        path.append(cfg[".".join(path)].subcommand)
    sub_parser, run = commands[" ".join(path)]
    try:
        run(cfg[".".join(path)])
    except (LockError, DiskFullError) as err:  # the flags were right, the machine's state is not: no usage
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except (ValueError, FileNotFoundError, ImportError) as err:  # user errors, named
        sub_parser.error(_flag_named(str(err), " ".join(path), cfg[".".join(path)]))


def _flag_named(message: str, command: str, cfg: Namespace) -> str:
    """A data reader's error names its parameter (`data_path='x': ...`); the user typed a flag: name that."""
    flag = {"prepare": "--verify" if cfg.get("verify") is not None else "--data", "evaluate": "--data",
            "tokenizer train": "--input"}.get(command)
    return f"{flag}{message[len('data_path'):]}" if flag and message.startswith("data_path=") else message


def build_parser() -> tuple[ArgumentParser, dict[str, tuple[ArgumentParser, Callable[[Namespace], Any]]]]:
    """The `tlama` parser and, per command ("convert to-hf"), its own parser and the function that runs it."""
    parser = ArgumentParser(prog="tlama", description="Pretrain Llama-style models: train, sample, convert.")
    parser.add_argument("--version", action="version", version=f"tlama-core {__version__}")
    commands = parser.add_subcommands(dest="command")
    runs: dict[str, tuple[ArgumentParser, Callable[[Namespace], Any]]] = {}

    def add(name: str, group: Any, sub: ArgumentParser, help: str, run: Callable[[Namespace], Any] | None) -> None:
        group.add_subcommand(name.split()[-1], sub, help=help)
        if run is not None:
            runs[name] = (sub, run)

    fit = ArgumentParser(description="Train a model: `tlama fit --help` lists every key of its YAML.")
    add("fit", commands, fit, "Train a model from a YAML config and flags (LightningCLI).", None)

    gen = ArgumentParser(description="Continue a prompt with a trained model and print the text.")
    gen.add_argument("--checkpoint", type=str, required=True, help=WEIGHTS_HELP)
    gen.add_argument("--prompt", type=str, required=True, help="Text to continue.")
    gen.add_argument("--max_new_tokens", type=int, default=200, help="Tokens to sample after the prompt.")
    gen.add_argument("--temperature", type=float, default=0.8, help="Sampling temperature; 0: greedy.")
    gen.add_argument("--top_k", type=int | None, default=50, help="Sample among the k likeliest tokens; null: all.")
    gen.add_argument("--tokenizer", type=str | None, default=None,
                     help="Sentencepiece .model or tokenizer.json; default: the run's copy the checkpoint records, "
                          "else its config.yaml's, else the built-in one.")
    gen.add_argument("--seed", type=int | None, default=None, help="Seed for repeatable samples.")
    gen.add_argument("--device", type=str, default="auto", help="cpu, cuda, ...; auto: cuda if available.")
    gen.add_argument("--crop_context", type=bool, default=True,
                     help="Past the model's max_seq_len, read only its last max_seq_len tokens (nanoGPT's rule); "
                          "false: an error instead.")
    add("generate", commands, gen, "Sample text from a model (any weights).", _generate)

    ev = ArgumentParser(description="Loss, perplexity and bits/char of a model on data: a human summary on stderr, "
                                    "one JSON object on stdout.")
    ev.add_argument("--model", type=str, required=True, help=WEIGHTS_HELP)
    ev.add_argument("--data", type=str, required=True, help="Text (.txt files) or token ids (.bin, .npy shards).")
    ev.add_argument("--tokenizer", type=str | None, default=None,
                    help="The model's tokenizer; default: the run's (config.yaml beside a checkpoint). Text needs one.")
    ev.add_argument("--seq_length", type=int | None, default=None, help="Window length; default: max_seq_len.")
    ev.add_argument("--batch_size", type=int, default=8, help="Windows per forward pass.")
    ev.add_argument("--max_batches", type=int | None, default=None, help="Stop after this many batches; null: all.")
    ev.add_argument("--device", type=str, default="auto", help="cpu, cuda, ...; auto: cuda if available.")
    add("evaluate", commands, ev, "Score a model on held-out data (loss, perplexity, bits/char).", _evaluate)

    prep = ArgumentParser(description="Tokenize a corpus into .bin shards that create_dataloader(DIR) reads as one "
                                      "stream; shard I of N takes a deterministic 1/N of the input.")
    prep.add_argument("--data", type=str | None, default=None,
                      help="Text (.txt), records (.jsonl, .jsonl.gz, .parquet), a directory or glob of them, or a "
                           "datasets save_to_disk directory. Required (as --tokenizer and --out) unless --verify.")
    prep.add_argument("--tokenizer", type=str | None, default=None, help="Sentencepiece .model or tokenizer.json.")
    prep.add_argument("--out", type=str | None, default=None, help="Directory of the shards.")
    prep.add_argument("--text_field", type=str, default="text", help="Field or column holding a record's text.")
    prep.add_argument("--split", type=str | None, default=None,
                      help="train or val: split-named files, else the first 90%% / last 10%%; null: all.")
    prep.add_argument("--shard", type=int, default=0, help="This machine's shard, 0 .. num_shards-1.")
    prep.add_argument("--num_shards", type=int, default=1, help="Machines sharing the work.")
    prep.add_argument("--workers", type=int | None, default=None,
                      help="Encoding processes; null: one per core (sentencepiece), one (tokenizer.json).")
    prep.add_argument("--verify", type=str | None, default=None,
                      help="Instead of writing, check the .bin shards of this directory (or glob) against their "
                           "sidecars: length and content hash (reads every byte).")
    add("prepare", commands, prep, "Tokenize a corpus into .bin shards.", _prepare)

    tok = ArgumentParser(description="Sentencepiece and Hugging Face (byte-level BPE) tokenizers.")
    add("tokenizer", commands, tok, "Train a tokenizer.", None)
    tok_commands = tok.add_subcommands(dest="subcommand")
    tok_train = ArgumentParser(description="Train a tokenizer on the text of a corpus, read as training reads it: "
                                           "sentencepiece BPE (the default) or a byte-level BPE tokenizer.json "
                                           "(--kind hf-bpe).")
    tok_train.add_argument("--input", type=str, nargs="+", required=True,
                           help="Text (.txt), records (.jsonl, .jsonl.gz, .parquet), directories or globs of them, "
                                "or datasets save_to_disk directories; several may be given.")
    tok_train.add_argument("--text_field", type=str, default="text", help="Field or column holding a record's text.")
    tok_train.add_argument("--split", type=str | None, default=None,
                           help="train or val: split-named files, else the first 90%% / last 10%%; null: all.")
    tok_train.add_argument("--vocab_size", type=int, required=True, help="Pieces in the vocabulary.")
    tok_train.add_argument("--output", type=str, required=True,
                           help="sentencepiece: the .model file to write (or its prefix); hf-bpe: the .json file, "
                                "or a directory to hold tokenizer.json.")
    tok_train.add_argument("--kind", type=str, default="sentencepiece", choices=["sentencepiece", "hf-bpe"],
                           help="sentencepiece (.model) or hf-bpe (GPT-2-style byte-level BPE tokenizer.json).")
    tok_train.add_argument("--model_type", type=str, default="bpe", help="sentencepiece: bpe, unigram, char or word.")
    tok_train.add_argument("--character_coverage", type=float, default=1.0,
                           help="sentencepiece: share of characters the vocabulary covers (rarer ones become unk).")
    add("tokenizer train", tok_commands, tok_train, "Train a sentencepiece or byte-level BPE tokenizer.",
        _tokenizer_train)

    plot = ArgumentParser(description="Plot train/validation loss and learning rate of a run's CSV log.")
    plot.add_argument("log", type=str, help="The run's CSV log (logs_dir/train_log.csv).")
    plot.add_argument("-o", "--output", type=str | None, default=None,
                      help="PNG file to write; default: beside the log, with the .png suffix.")
    add("plot", commands, plot, "Plot a run's loss and learning rate (needs matplotlib).", _plot)

    conv = ArgumentParser(description="Convert weights to and from Hugging Face Llama directories.")
    add("convert", commands, conv, "Convert weights to or from Hugging Face.", None)
    conv_commands = conv.add_subcommands(dest="subcommand")
    to_hf = ArgumentParser(description="Write any weights as a Hugging Face Llama directory.")
    to_hf.add_argument("--checkpoint", type=str, required=True, help=WEIGHTS_HELP)
    to_hf.add_argument("--out", type=str, required=True, help="Output directory.")
    to_hf.add_argument("--tokenizer", type=str | None, default=None,
                       help="Sentencepiece .model or tokenizer.json to include; default: the one known for the "
                            "weights (the run's, or a Hugging Face directory's own), else none.")
    add("convert to-hf", conv_commands, to_hf, "Weights -> Hugging Face Llama directory.", _to_hf)
    from_hf = ArgumentParser(description="Read a Hugging Face Llama directory, write our safetensors directory with "
                                         "its tokenizer (tokenizer.model / tokenizer.json).")
    from_hf.add_argument("--model", type=str, required=True, help="Hugging Face Llama directory (safetensors).")
    from_hf.add_argument("--out", type=str, required=True, help="Output directory.")
    add("convert from-hf", conv_commands, from_hf, "Hugging Face Llama directory -> our safetensors.", _from_hf)
    return parser, runs


def _generate(cfg: Namespace) -> None:
    from tlama_core.cli.generate import generate

    print(generate(cfg.checkpoint, cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.tokenizer,
                   cfg.seed, cfg.device, cfg.crop_context))


def _evaluate(cfg: Namespace) -> None:
    import json

    import torch

    from tlama_core.cli.generate import known_tokenizer
    from tlama_core.evaluation import evaluate, summary
    from tlama_core.models import find_weights

    weights = find_weights(cfg.model)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    result = evaluate(weights.load().to(device), cfg.data, known_tokenizer(weights, cfg.tokenizer), cfg.seq_length,
                      cfg.batch_size, cfg.max_batches)
    print(summary(result, cfg.model, cfg.data), file=sys.stderr)
    print(json.dumps(result))


def _prepare(cfg: Namespace) -> None:
    from tlama_core.data.prepare import prepare

    if cfg.verify is not None:
        from tlama_core.data.integrity import verify

        matched, unhashed = verify(cfg.verify)
        print(f"{len(matched)} shard(s) match their sidecars' length and content hash"
              + (f"; {len(unhashed)} have no content hash, only their length was checked: "
                 f"{', '.join(str(p) for p in unhashed[:3])}" if unhashed else ""))
        return
    missing = [f"--{k}" for k in ("data", "tokenizer", "out") if cfg[k] is None]
    if missing:
        raise ValueError(f"{', '.join(missing)}: required to prepare a shard (or pass --verify DIR to check shards).")
    path = prepare(cfg.data, cfg.tokenizer, cfg.out, text_field=cfg.text_field, split=cfg.split, shard=cfg.shard,
                   num_shards=cfg.num_shards, workers=cfg.workers)
    print(f"shard {cfg.shard} of {cfg.num_shards} written to {path}")


def _tokenizer_train(cfg: Namespace) -> None:
    from tlama_core.data import train_tokenizer

    if cfg.kind == "hf-bpe":
        from tlama_core.data.hf_tokenizer import train_hf_bpe

        path = train_hf_bpe(cfg.input, cfg.output, cfg.vocab_size, text_field=cfg.text_field, split=cfg.split)
        print(f"tokenizer written to {path}")
        return
    path = train_tokenizer(cfg.input, cfg.output, cfg.vocab_size, character_coverage=cfg.character_coverage,
                           model_type=cfg.model_type, text_field=cfg.text_field, split=cfg.split)
    print(f"tokenizer written to {path}")


def _plot(cfg: Namespace) -> None:
    from tlama_core.cli.plot import plot_log

    print(f"plot written to {plot_log(cfg.log, cfg.output)}")


def _to_hf(cfg: Namespace) -> None:
    from tlama_core.cli.convert import convert_to_hf

    out, tokenizer = convert_to_hf(cfg.checkpoint, cfg.out, cfg.tokenizer)
    if tokenizer is None:
        print(f"no tokenizer is known for {cfg.checkpoint} (no --tokenizer, no run config.yaml beside it): wrote the "
              "weights alone; pass --tokenizer to include one.", file=sys.stderr)
    print(f"Hugging Face Llama directory written to {out}" + (f" with the tokenizer {tokenizer}" if tokenizer else ""))


def _from_hf(cfg: Namespace) -> None:
    from tlama_core.cli.convert import convert_from_hf

    out, tokenizer = convert_from_hf(cfg.model, cfg.out)
    if tokenizer is None:
        print(f"{cfg.model} holds no tokenizer (tokenizer.model or tokenizer.json): wrote the weights alone; pass "
              "--tokenizer to the commands that read them.", file=sys.stderr)
    print(f"safetensors directory written to {out}" + (f" with the tokenizer {tokenizer.name}" if tokenizer else ""))
