"""The options of a run request, defined once: `python -m hulurt` / `hulurt run` build their argparse parser
from RUN_OPTIONS, and `huluexport run` hands its arguments to that same parser (docs/cli.md).

Each row says how the option is spelled and parsed, how its value is checked (a hulurt.checks function, the
same one the Python API calls), and where the value goes: a keyword of `hulurt.load` ("load"), of
`Model.stream` ("stream"), a field of `SamplingConfig` ("sampling"), or the command line itself ("cli").

Adding an option: append an Option row here (with `to` and, if the name differs, `kwarg`) and give the API
function it names that keyword; both commands, their --help and tests/runtime/test_options.py pick it up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from hulurt import checks
from hulurt.backends.base import PROVIDERS
from hulurt.contract import DECODER_FORMS

Check = Callable[[Any], "str | None"]
DESTINATIONS = ("load", "stream", "sampling", "cli")
SAMPLE_ON = ("auto", "device", "host")  # --sample-on (hulurt.device_sample)


@dataclass(frozen=True)
class Option:
    """One command-line option (or the positional when `flags` holds a bare name)."""

    flags: tuple[str, ...]  # ("--max-new-tokens",), ("-v", "--verbose"), or ("bundle",) for a positional
    help: str
    type: Callable[[str], Any] | None = str  # argparse converter of one word; None for flags
    default: Any = None
    check: Check | None = None  # reason when a parsed value is refused (hulurt.checks)
    to: str = "cli"  # where the value goes: one of DESTINATIONS
    kwarg: str | None = None  # the keyword there (default: the option's dest)
    convert: Callable[[Any], Any] | None = None  # parsed value -> the API's value (e.g. a flag -> False)
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    flag: bool = False  # store_true
    repeat: bool = False  # may be given several times; the value is a list
    required: bool = False
    exclusive: str | None = None  # options sharing a name are mutually exclusive
    sampling_only: bool = False  # refused unless --temperature is given (greedy decoding ignores it)

    def __post_init__(self) -> None:
        if self.to not in DESTINATIONS:
            raise ValueError(f"option {self.flags}: 'to' must be one of {DESTINATIONS}; got {self.to!r}")

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    @property
    def name(self) -> str:
        """How messages name it: '--top-p', or 'BUNDLE' for a positional."""
        return self.flags[0].upper() if self.positional else self.flags[-1]

    @property
    def dest(self) -> str:
        return self.flags[-1].lstrip("-").replace("-", "_")

    @property
    def target(self) -> str:
        return self.kwarg or self.dest


RUN_OPTIONS: tuple[Option, ...] = (
    Option(("bundle",), "bundle directory written by `huluexport build` (has manifest.json)", type=Path,
           to="load"),
    Option(("--prompt",), "the question", required=True, check=checks.prompt, to="stream"),
    Option(("--image",), "a 2-D image (PNG/JPEG/..., or a single DICOM file); repeat for several", type=Path,
           repeat=True, default=[], check=checks.file_path, metavar="PATH", to="stream", kwarg="images"),
    Option(("--volume",), "a 3-D volume: NIfTI file (.nii/.nii.gz) or a directory holding one DICOM series",
           type=Path, check=checks.file_or_dir_path, metavar="PATH|DICOM_DIR", to="stream"),
    Option(("--video",), "a video file (mp4, ...)", type=Path, check=checks.file_path, metavar="PATH",
           to="stream"),
    Option(("--window",), "intensity window for DICOM and NIfTI: a CT preset (brain, subdural, stroke, lung, "
           "mediastinum, abdomen, liver, bone) or CENTER,WIDTH (default: the file's VOI LUT or window, else "
           "min-max)", check=checks.window, metavar="PRESET|C,W", to="stream"),
    Option(("--series",), "the SeriesInstanceUID to read when --volume is a folder holding several DICOM series "
           "(default: the largest, with a note)", metavar="UID", to="stream"),
    Option(("--slices",), "slices of a volume chosen by linspace(0, n-1, N) as upstream does (default: all, or "
           "sampled down to what the bundle takes, with a note)", type=int, check=checks.num_slices, metavar="N",
           to="stream", kwarg="num_slices"),
    Option(("--visual-budget",), "visual tokens for the processor's resize rule: fit (default: what this "
           "bundle's context takes), upstream (the processor's default budget, exactly) or a number",
           check=checks.visual_budget, metavar="fit|upstream|N", to="stream",
           convert=lambda v: int(v) if isinstance(v, str) and v.isdigit() else v),
    Option(("--max-pixels",), "most pixel samples one input may decode, checked from its header before decoding "
           "(default 268435456)", type=int, check=checks.max_pixels, metavar="N", to="stream"),
    Option(("--max-new-tokens",), "most tokens to generate (default: the bundle's default)", type=int,
           check=checks.max_new_tokens, metavar="N", to="stream"),
    Option(("--greedy",), "greedy decoding (the default)", type=None, flag=True, exclusive="mode"),
    Option(("--temperature",), "sample with this temperature (default: greedy decoding)", type=float,
           check=checks.temperature, metavar="T", exclusive="mode", to="sampling"),
    Option(("--top-k",), "sampling: keep the K most likely tokens (0 = off; needs --temperature)", type=int,
           check=checks.top_k, metavar="K", to="sampling", sampling_only=True),
    Option(("--top-p",), "sampling: nucleus probability mass (1.0 = off; needs --temperature)", type=float,
           check=checks.top_p, metavar="P", to="sampling", sampling_only=True),
    Option(("--seed",), "sampling seed for repeatable runs (needs --temperature)", type=int, check=checks.seed,
           metavar="N", to="sampling", sampling_only=True),
    Option(("--repetition-penalty",), "penalty for tokens already in the sequence (1.0 = off)", type=float,
           check=checks.repetition_penalty, metavar="R", to="sampling"),
    Option(("--no-token-reduction",), "keep every visual token of videos/volumes even if the bundle enables "
           "token reduction", type=None, flag=True, to="stream", kwarg="token_reduction",
           convert=lambda v: False if v else None),
    Option(("--threads",), "intra-op threads (0 = engine default)", type=int, default=0, check=checks.threads,
           metavar="N", to="load"),
    Option(("--kv-capacity",), "most tokens (prompt + new) a request's KV cache holds (default: the bundle's "
           "max_context); the gqa-static form allocates its GPU buffers at this size once: lower it on a GPU "
           "short of memory", type=int, check=checks.kv_capacity, metavar="N", to="load"),
    Option(("--vision-batch",), "frames per vision call (default: the most whose activations fit a fifth "
           "of the available memory; exact for any value)", type=int, check=checks.split_size, metavar="N", to="load"),
    Option(("--prefill-chunk",), "prompt tokens per decoder prefill call (default: the most whose activations "
           "fit a fifth of the available memory)", type=int, check=checks.split_size, metavar="N", to="load"),
    Option(("--provider",), "execution provider: auto picks the CUDA EP, then the TensorRT EP, then CPU (onnxruntime); "
           "trt-native runs the bundle's TensorRT engines (built by hulurt.engines; not yet run on a GPU)",
           choices=PROVIDERS, default="auto",
           to="load"),
    Option(("--trt-cache",), "TensorRT execution provider: keep its engine and timing caches in DIR between runs "
           "(profiles come from the bundle's dim ranges)", type=Path, metavar="DIR", to="load",
           kwarg="trt_cache"),
    Option(("--decoder-form",), "decoder graph to run when the bundle has several (default: gqa-static on the CUDA "
           "provider, v1-concat elsewhere; docs/gpu.md)", choices=tuple(DECODER_FORMS), metavar="FORM", to="load",
           kwarg="decoder_form"),
    Option(("--no-cuda-graph",), "CUDA provider: do not capture the decode step in a CUDA graph", type=None,
           flag=True, to="load", kwarg="cuda_graph", convert=lambda v: False if v else None),
    Option(("--sample-on",), "where a sampled token is drawn with the gqa-static decoder: device (its provider's "
           "device, only the token comes back), host (numpy), auto (device on a GPU provider)",
           choices=SAMPLE_ON, default="auto", metavar="WHERE", to="load", kwarg="device_sampling",
           convert=lambda v: {"device": True, "host": False}.get(v)),
    Option(("--skip-hash-check",), "check bundle file sizes only, not their sha256 (faster for large bundles)",
           type=None, flag=True, to="load", kwarg="verify_hashes", convert=lambda v: not v),
    Option(("-v", "--verbose"), "log progress; show tracebacks on errors", type=None, flag=True),
)


def select(*dests: str, options: Sequence[Option] = RUN_OPTIONS) -> tuple[Option, ...]:
    """The rows named (by dest, e.g. "top_p"), in table order: for another command (`hulurt batch`) that takes
    some of the run options, so they are spelled, documented and checked the same way everywhere:
    `add_options(parser, select("temperature", "top_p", "seed", "threads"))`."""
    known = {o.dest for o in options}
    unknown = sorted(set(dests) - known)
    if unknown:
        raise KeyError(f"no run option {', '.join(unknown)}; the table has {', '.join(sorted(known))}")
    return tuple(o for o in options if o.dest in dests)


class OptionParser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: argument --seed: must be ...` on stderr, exit 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _converter(opt: Option) -> Callable[[str], Any] | None:
    """The option's type with its check folded in, so argparse reports a refusal as `argument --x: reason`."""
    base, check = opt.type, opt.check
    if base is None or check is None:
        return base

    def convert(word: str) -> Any:
        value = base(word)
        reason = check(value)
        if reason is not None:
            raise argparse.ArgumentTypeError(reason)
        return value

    convert.__name__ = getattr(base, "__name__", "value")  # argparse says "invalid int value: 'x'"
    return convert


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option] = RUN_OPTIONS) -> None:
    groups: dict[str, Any] = {}
    for opt in options:
        target: Any = parser
        if opt.exclusive is not None:
            if opt.exclusive not in groups:
                groups[opt.exclusive] = parser.add_mutually_exclusive_group()
            target = groups[opt.exclusive]
        kw: dict[str, Any] = {"help": opt.help}
        if opt.flag:
            kw["action"] = "store_true"
        else:
            kw["type"] = _converter(opt)
            if opt.metavar:
                kw["metavar"] = opt.metavar
            if opt.choices:
                kw["choices"] = opt.choices
            if opt.repeat:
                kw["action"] = "append"
            kw["default"] = list(opt.default) if opt.repeat else opt.default
        if not opt.positional:
            kw["dest"] = opt.dest
            if opt.required:
                kw["required"] = True
        target.add_argument(*opt.flags, **kw)


def build_parser(prog: str = "hulurt", options: Sequence[Option] = RUN_OPTIONS) -> OptionParser:
    p = OptionParser(
        prog=prog,
        description="Answer a prompt about text, images, a CT/MR volume or a video with a huluexport bundle "
        "(onnxruntime; no torch). The answer streams to stdout, the timing summary goes to stderr.",
    )
    add_options(p, options)
    return p


def check_greedy_mode(ns: argparse.Namespace, options: Sequence[Option] = RUN_OPTIONS) -> str | None:
    """Sampling knobs given without --temperature would be silently ignored: the refusal, or None."""
    if getattr(ns, "temperature", None) is not None:
        return None
    for opt in options:
        if opt.sampling_only and getattr(ns, opt.dest, None) is not None:
            return (f"argument {opt.name}: only applies when sampling, and greedy decoding is on (the default); "
                    f"add --temperature T to sample, or leave out {opt.name}")
    return None


def sampling_config(ns: argparse.Namespace, options: Sequence[Option] = RUN_OPTIONS) -> Any:
    """The SamplingConfig of parsed arguments: greedy unless --temperature was given."""
    from hulurt.sampling import SamplingConfig

    knobs = destination_kwargs(ns, "sampling", options)
    return SamplingConfig(greedy="temperature" not in knobs, **knobs)


def parse_run_args(argv: Sequence[str] | None, prog: str = "hulurt",
                   options: Sequence[Option] = RUN_OPTIONS) -> argparse.Namespace:
    """Parse and check a run request's arguments; a refusal is one line on stderr and exit 2."""
    parser = build_parser(prog, options)
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    reason = check_greedy_mode(ns, options)
    if reason is not None:
        parser.error(reason)
    return ns


def destination_kwargs(ns: argparse.Namespace, to: str,
                       options: Sequence[Option] = RUN_OPTIONS) -> dict[str, Any]:
    """{keyword: value} of the options going to `to` (values the user left unset are left out)."""
    out: dict[str, Any] = {}
    for opt in options:
        if opt.to != to or not hasattr(ns, opt.dest):  # a command may take only some rows (select)
            continue
        value = getattr(ns, opt.dest)
        if opt.convert is not None:
            value = opt.convert(value)
        if value is not None:
            out[opt.target] = value
    return out


def request_kwargs(ns: argparse.Namespace,
                   options: Sequence[Option] = RUN_OPTIONS) -> tuple[dict[str, Any], dict[str, Any]]:
    """(keywords of hulurt.load, keywords of Model.stream incl. `sampling`) from parsed arguments."""
    stream = destination_kwargs(ns, "stream", options)
    stream["sampling"] = sampling_config(ns, options)
    return destination_kwargs(ns, "load", options), stream
