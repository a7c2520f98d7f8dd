"""The ``emoctl`` command.

Two kinds of subcommand share one front door:

* Trainer commands (``fit``, ``validate``, ``test``, ``predict``) go to
  Lightning's ``LightningCLI``: any LightningModule and LightningDataModule can
  be named in a recipe with ``class_path``, several ``--config`` files merge in
  order, dotted overrides work (``--trainer.max_steps=100``) and ``--help``
  documents every argument from type hints and docstrings.
* Tools (``bench`` and, in later work, ``harvest``, ``select``, ``steer`` ...)
  are plain typed functions registered in :data:`TOOLS`.  jsonargparse gives
  them the same ``--config``/``--print_config``/dotted-override behaviour.

Errors in the user's input (an unknown key, a wrong type, a missing file, an
:class:`~emoctl.errors.EmoctlError` raised while running) are printed as one
paragraph naming the key or path, and the process exits with status 2 (input)
or 1 (run time), without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from emoctl.errors import EmoctlError, first_line

TRAINER_COMMANDS: dict[str, str] = {
    "fit": "Train a model (an SAE, an EmoShift layer ...) from a recipe.",
    "validate": "Run one validation pass of a model from a recipe.",
    "test": "Run the test loop of a model from a recipe.",
    "predict": "Run the predict loop of a model from a recipe.",
}

TRAINER_ALIASES: dict[str, tuple[str, list[str], str]] = {
    "harvest": ("predict", ["--return_predictions=false"],
                "Generate speech and store a hookpoint's activations (predict with an ActivationHarvester)."),
}
"""Trainer commands under a task's name: ``emoctl harvest`` is ``predict`` with the given leading arguments."""


@dataclass(frozen=True)
class Tool:
    """A subcommand that is not a Trainer method: a typed function, imported lazily."""

    target: str  # "module:function"
    summary: str
    positional: bool = False  # required arguments without --names (`emoctl report diff A B`)

    def load(self) -> Callable[..., Any]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


TOOLS: dict[str, dict[str, Tool]] = {
    "bench": {
        "sae": Tool("emoctl.bench.sae:bench_sae", "Top-k SAE training step vs the bare matmul and sparsify."),
        "topk": Tool("emoctl.bench.topk:bench_topk", "Exact top-k of SAE pre-activations: torch.topk vs block "
                     "maxima and a sampled threshold."),
        "probes": Tool("emoctl.bench.probes:bench_probes", "F0 tracker vs librosa.pyin and torchcrepe."),
        "harvest": Tool("emoctl.bench.harvest:bench_harvest",
                        "Generation with the harvester vs without (mini TTS), or the IndexTTS2 adapter vs upstream."),
        "cosyvoice": Tool("emoctl.bench.cosyvoice:bench_cosyvoice",
                          "CosyVoice-300M or CosyVoice2 (--kind) adapter decoding vs upstream's loop; EmoShift "
                          "step vs a frozen forward."),
        "gpu": Tool("emoctl.bench.gpu:bench_gpu",
                    "The GPU checks (SAE step, loader, CosyVoice, IndexTTS2) in one run and one Markdown file."),
        "ser": Tool("emoctl.bench.ser:bench_ser",
                    "Scoring with emotion2vec (plus_base size) vs the embedded mini SER."),
        "ddp": Tool("emoctl.bench.ddp:bench_ddp",
                    "The SAE demo recipe on 1 vs 2 DDP processes (CPU, gloo): time per step and loss curves."),
        "loader": Tool("emoctl.bench.loader:bench_loader",
                       "SAE training batches from an activation store vs a plain copy of its bytes."),
        "fit": Tool("emoctl.bench.fit:bench_fit",
                    "SAE training end to end (emoctl fit on a synthetic store at the paper's shape): ms/step, tokens/s."),
    },
    "corpus": {
        "build": Tool("emoctl.commands.corpus:build_corpus",
                      "Synthesize the ESD-shaped eSpeak NG corpus (resumable)."),
        "ceiling": Tool("emoctl.commands.corpus:prosody_ceiling",
                        "Bayes classifier on the corpus's true prosody knobs: the ceiling for SER accuracy."),
        "codec": Tool("emoctl.commands.corpus:fit_subframe_codec",
                      "Fit a sub-frame codec (four 5 ms envelopes per 20 ms token, RVQ) on the train split."),
    },
    "report": {
        "table1": Tool("emoctl.commands.table1:table1", "The SAE seed's Table 1: induce/suppress emotions per steering method."),
        "schedules": Tool("emoctl.commands.schedules:report_schedules",
                          "Emotion over time: a switch inside one utterance, each segment scored (SER, F0, RMS)."),
        "emoshift": Tool("emoctl.commands.report:emoshift_table1",
                         "The EmoShift seed's Table 1: zero-shot, Neutral, SFT, EmoShift full and low rank."),
        "mixtures": Tool("emoctl.commands.report:report_mixtures",
                         "Mixed emotions from soft labels per method: E-SIM, TEP, S-SIM, WER, Spearman ρ, H-Rate."),
        "diff": Tool("emoctl.commands.report:report_diff",
                     "Which inputs (models, protocol, seeds, packages, machine) and results of two reports differ.",
                     positional=True),
        "readme": Tool("emoctl.commands.report:readme_tables",
                       "Copy the report tables README and docs/ quote into them, or check that they are equal."),
    },
    "inspect": {
        "recovery": Tool("emoctl.commands.inspect:inspect_recovery",
                         "How well an SAE recovers a synthetic store's dictionary."),
        "emotionality": Tool("emoctl.commands.inspect:emotionality_report",
                             "Paired probes and SER of a backbone's emotions on held-out sentences."),
        "codec": Tool("emoctl.commands.inspect:codec_roundtrip_report",
                      "Speech codec round trips of a corpus split: per-emotion F0, RMS, duration and WER."),
        "layers": Tool("emoctl.commands.inspect:inspect_layers",
                       "Per hookpoint, how well a probe separates emotional from neutral states (CoCoEmo's)."),
    },
    "store": {
        "info": Tool("emoctl.commands.store:store_info", "A store's attributes, size and labels."),
        "verify": Tool("emoctl.commands.store:verify_store",
                       "Check every shard's CRC-32 and every row for NaN/Inf; name the damaged file."),
    },
    "calibrate": {"": Tool("emoctl.commands.calibrate:calibrate",
                           "α → P(target emotion) per method and emotion: monotone fit, CIs, WER beside it.")},
    "extract": {"": Tool("emoctl.commands.extract:extract_directions",
                         "Mean-difference emotion directions at the most discriminable layers (CoCoEmo's Eq. 6).")},
    "select": {"": Tool("emoctl.commands.select:select_features", "Top-m SAE emotion features by paired Δ-score.")},
    "attribute": {"": Tool("emoctl.commands.attribute:attribute_features",
                           "Acoustic effect (ΔF0, ΔRMS, ...) of steering each selected feature alone.")},
    "atlas": {"": Tool("emoctl.commands.atlas:atlas",
                       "A static site to see and hear every SAE latent: stats, top clips, steering audio.")},
    "steer": {
        "emoshift": Tool("emoctl.commands.steer:emoshift_sweep",
                         "EmoShift intensity sweep over α: SER accuracy per emotion, WER, SpkSIM (MD + CSV + PNG)."),
        "compound": Tool("emoctl.commands.steer:emoshift_compound",
                         "EmoShift compound emotions: weighted mixtures vs pure emotions (F0, RMS, duration, SER)."),
        "speak": Tool("emoctl.commands.steer:speak",
                      "Speak under a switch, ramp or segments (any method); WAVs and each part scored (SER, F0, RMS)."),
    },
    "evaluate": {"": Tool("emoctl.commands.evaluate:evaluate",
                          "Score generated clips: WER, SpkSIM, DNSMOS, SER accuracy and Emo-SIM (CSV + Markdown).")},
    "listen": {
        "build": Tool("emoctl.commands.listen:listen_build",
                      "Blind listening-test pages (EMOS/NMOS or A/B) of a Table 1 report kept with its audio."),
        "score": Tool("emoctl.commands.listen:listen_score",
                      "Score the pages' ratings CSVs: EMOS, NMOS or preferences per method, paired tests, agreement.",
                      positional=True),
    },
}
"""Tool commands: ``emoctl <group> <name> [--args]``, each a typed function of the commands layer
(:mod:`emoctl.commands`, one module per group).  Later work adds groups."""

TOOL_SUMMARIES: dict[str, str] = {
    "bench": "Benchmarks that print a Markdown table with ratios against a baseline measured in the same run.",
    "corpus": "The embedded ESD-shaped emotional speech corpus.",
    "report": "Reproduce the papers' tables (Markdown, CSV, PNG and TensorBoard).",
    "inspect": "Look inside trained artifacts.",
    "store": "Inspect and verify an activation store.",
    "extract": "Write each emotion's mean-difference directions at chosen hookpoints (safetensors + JSON).",
    "select": "Select each emotion's SAE features from paired activations (JSON + PNG + Markdown).",
    "atlas": "Build the feature atlas: a static site with every latent's statistics, audio and steering.",
    "calibrate": "Map steering strength α to the recognizer's P(target) per method and emotion (JSON + MD + PNG).",
    "attribute": "Steer one feature at a time and report the acoustic shifts (Markdown + CSV + PNG).",
    "steer": "Apply steering: EmoShift sweeps and compound emotions; speak under any schedule (WAV + scores).",
    "evaluate": "Score generated clips against a manifest: WER, SpkSIM, DNSMOS, SER accuracy, Emo-SIM.",
    "listen": "Blind listening tests by raters: static pages from a Table 1 report's clips, then their scores.",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``emoctl`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_overview())
        return 0
    command, rest = args[0], args[1:]
    try:
        _check_config_files(rest)
        if command in TRAINER_COMMANDS:
            _run_lightning_cli(command, rest, from_argv=argv is None)
        elif command in TRAINER_ALIASES:
            _run_alias(command, rest, from_argv=argv is None)
        elif command in TOOLS:
            _run_tool(command, rest)
        else:
            raise _InputError(
                f"unknown command {command!r}. Commands: {', '.join([*TRAINER_COMMANDS, *TRAINER_ALIASES, *TOOLS])}. "
                "Run `emoctl --help` for what each one does."
            )
    except _InputError as err:
        _print_error(command, str(err))
        return 2
    except argparse.ArgumentError as err:
        _print_error(command, _explain_argument_error(err, command))
        return 2
    except EmoctlError as err:
        _print_error(command, str(err))
        return 1
    except (OSError, UnicodeDecodeError) as err:  # the file system said no: name the file, not the stack
        _print_error(command, _explain_os_error(err))
        return 1
    except Exception as err:  # a library (jsonargparse building the recipe's classes) wrapped our own error
        cause = _emoctl_cause(err)
        if cause is None and _is_lightning_misconfiguration(err):  # the Trainer refused a setting, in words
            said = " ".join(str(err).split()).rstrip(".")
            _print_error(command, f"Lightning refused the trainer settings: {said}. Fix that trainer key in the "
                                  f"recipe or on the command line (`emoctl {command} --help` lists them).")
            return 2
        if cause is None:
            raise
        _print_error(command, str(cause))
        return 1
    return 0


def _emoctl_cause(err: BaseException) -> EmoctlError | None:
    """The EmoctlError an exception was raised from, following ``__cause__`` / ``__context__``, if any."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, EmoctlError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _is_lightning_misconfiguration(err: BaseException) -> bool:
    """Lightning's MisconfigurationException (accelerator="cuda" without a GPU, devices=0, max_steps=-5): its
    message names the setting and the allowed values, so it is a user's input error, not a crash."""
    fabric = sys.modules.get("lightning.fabric.utilities.exceptions")
    return fabric is not None and isinstance(err, fabric.MisconfigurationException)


class _InputError(Exception):
    """A malformed command line, reported like a configuration error."""


def _overview() -> str:
    lines = ["usage: emoctl <command> [--config FILE ...] [--key=value ...]", "", "Trainer commands (LightningCLI):"]
    lines += [f"  {name:<10} {text}" for name, text in TRAINER_COMMANDS.items()]
    lines += [f"  {name:<10} {text}" for name, (_, _, text) in TRAINER_ALIASES.items()]
    lines += ["", "Tools:"]
    for group, tools in TOOLS.items():
        lines.append(f"  {group:<10} {TOOL_SUMMARIES.get(group, '')}")
        lines += [f"    {group} {name:<12} {tool.summary}" for name, tool in tools.items()]
    lines += [
        "",
        "Every command takes --help, --config FILE (repeatable, merged in order), dotted overrides",
        "such as --trainer.max_steps=100, and --print_config to show the resolved configuration.",
        "Example: emoctl fit --config recipes/sae_demo.yaml",
    ]
    return "\n".join(lines)


def _print_error(command: str, message: str) -> None:
    text = textwrap.fill(f"emoctl {command}: error: {_unwrap_worker_error(message)}", width=100,
                         break_on_hyphens=False, break_long_words=False)  # a long path stays whole, to copy
    print(text, file=sys.stderr)


def _explain_os_error(err: OSError | UnicodeDecodeError) -> str:
    if isinstance(err, UnicodeDecodeError):
        where = _file_being_read(err)
        what = f"{where} is not UTF-8 text" if where else "a file that should be UTF-8 text is not"
        return (f"{what} ({err.reason} at byte {err.start}); re-save it as UTF-8 or check that the path names the "
                "file you meant.")
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f) or "a file"
    hints = {PermissionError: "check its permissions or choose another path",
             FileExistsError: "something is already there; move it or choose another path",
             NotADirectoryError: "a file stands where a folder is needed; move it or choose another path",
             IsADirectoryError: "a folder stands where a file is needed; choose a file path",
             FileNotFoundError: "check the path (and that its parent folders exist)"}
    hint = next((h for kind, h in hints.items() if isinstance(err, kind)), None)
    if hint is None and err.errno == 28:  # ENOSPC
        hint = "the disk is full; free space and rerun (long jobs resume)"
    return f"{err.strerror or err} ({type(err).__name__}): {where}; {hint or 'check the path and rerun'}."


def _file_being_read(err: BaseException) -> str | None:
    """The file a decoding error came from, which the error itself does not say: the innermost frame of its
    traceback that holds a path (``Path.read_text``'s ``self``, a reader's ``path``) to an existing file."""
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name in ("self", "path", "fpath", "filename", "file"):
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) or type(value).__name__ == "Path":
                candidate = str(value)
                if len(candidate) < 4096 and os.path.isfile(candidate):
                    return candidate
    return None


def _check_config_files(args: Sequence[str]) -> None:
    """Read each ``--config`` file first, so a recipe that is not UTF-8, not YAML or not a mapping is named (the
    parser reports only the problem, and with several recipes merged the user cannot tell which one)."""
    import yaml

    paths = [value for flag, value in zip(args, args[1:]) if flag in ("--config", "-c")]
    paths += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    for path in paths:
        if not os.path.isfile(path):
            continue  # a folder, a missing file or inline YAML: the parser's own message names it
        try:
            content = yaml.safe_load(Path(path).read_bytes().decode("utf-8"))
        except UnicodeDecodeError as err:
            raise _InputError(f"the recipe {path} is not UTF-8 text ({err.reason} at byte {err.start}); re-save it "
                              "as UTF-8.") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or first_line(err)
            raise _InputError(f"the recipe {path} is not valid YAML ({problem}{at}); fix it there.") from None
        if content is not None and not isinstance(content, dict):
            raise _InputError(f"the recipe {path} holds a YAML {type(content).__name__}, not a mapping of keys "
                              "(trainer:, model:, data: ...); see recipes/*.yaml for the layout.")


def _unwrap_worker_error(message: str) -> str:
    """The error's own message where a DataLoader worker re-raised it with the worker's traceback prepended."""
    if "in DataLoader worker process" not in message or "Original Traceback" not in message:
        return message
    last = message.rstrip().splitlines()[-1]  # "emoctl.errors.StoreError: <the message>"
    name, sep, own = last.partition(": ")
    return own if sep and name.rsplit(".", 1)[-1].endswith("Error") else message


def _explain_argument_error(err: argparse.ArgumentError, command: str) -> str:
    message = " ".join(str(err).split())
    return (
        f"{message}. Check the key's spelling, type and path against `emoctl {command} --help`, "
        f"or print the resolved configuration with `emoctl {command} --config ... --print_config`."
    )


def _run_lightning_cli(command: str, rest: list[str], from_argv: bool) -> None:
    from emoctl.lightning_cli import EmoctlLightningCLI  # lazy: Lightning (seconds) only for trainer commands

    # LightningCLI warns when given ``args`` while sys.argv also holds arguments; pass
    # None when the arguments *are* sys.argv.
    EmoctlLightningCLI(
        args=None if from_argv else [command, *rest],
        parser_kwargs={"exit_on_error": False},
    )


def _run_alias(command: str, rest: list[str], from_argv: bool) -> None:
    target, leading, _ = TRAINER_ALIASES[command]
    if not from_argv:
        _run_lightning_cli(target, [*leading, *rest], from_argv=False)
        return
    # Rewrite sys.argv rather than pass args: Lightning's DDP launcher re-runs sys.argv in each child process.
    saved = sys.argv
    sys.argv = [saved[0], target, *leading, *rest]
    try:
        _run_lightning_cli(target, [*leading, *rest], from_argv=True)
    finally:
        sys.argv = saved


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)
"""A negative number in any spelling, ``-1e30`` and ``-.5`` included."""


def _attach_negative_numbers(args: list[str]) -> list[str]:
    """``--key -1e30`` as ``--key=-1e30``: argparse takes only ``-1`` and ``-1.5`` for negative numbers, so a
    negative value in scientific notation would read as an unknown option and the user would be told that the
    key "expected one argument" instead of what is wrong with the value."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if (arg.startswith("--") and "=" not in arg and i + 1 < len(args) and NEGATIVE_NUMBER.match(args[i + 1])):
            out.append(f"{arg}={args[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def _list_positionals(function: Callable[..., Any], args: list[str]) -> list[str]:
    """The leading file names of a shell glob (``emoctl listen score ratings/*.csv --key ...``) as one JSON list,
    where the function's first parameter is a list: jsonargparse reads a list positional from one argument."""
    import json
    import typing

    first = next(iter(typing.get_type_hints(function).items()), (None, None))
    if first[0] is None or typing.get_origin(first[1]) is not list:
        return args
    count = next((i for i, arg in enumerate(args) if arg.startswith("-")), len(args))
    if count == 0 or (count == 1 and args[0].startswith("[")):
        return args
    return [json.dumps(args[:count]), *args[count:]]


def _run_tool(group: str, rest: list[str]) -> None:
    tools = TOOLS[group]
    if "" in tools:  # a group that is a single command: `emoctl select --key=value`
        rest = ["", *rest]
    elif not rest or rest[0] in ("-h", "--help"):
        print(f"usage: emoctl {group} <name> [--config FILE] [--key=value ...]\n")
        print("\n".join(f"  {name:<12} {tool.summary}" for name, tool in tools.items()))
        return
    name, rest = rest[0], rest[1:]
    if name not in tools:
        raise _InputError(f"unknown {group} {name!r}; choose one of: {', '.join(tools)}")
    rest = _attach_negative_numbers(rest)
    from jsonargparse import ArgumentParser

    function = tools[name].load()
    if tools[name].positional:
        rest = _list_positionals(function, rest)
    parser = ArgumentParser(prog=f"emoctl {group} {name}".rstrip(), description=function.__doc__, exit_on_error=False)
    parser.add_argument("-c", "--config", action="config", help="YAML file of arguments (repeatable).")
    parser.add_function_arguments(function, as_group=False, as_positional=tools[name].positional)
    config = parser.parse_args(rest)
    kwargs = parser.instantiate_classes(config).as_dict()
    kwargs.pop("config", None)
    kwargs.pop("__path__", None)
    function(**kwargs)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
