"""argparse ``type=`` functions shared by the bench scripts.

A bad value becomes argparse's usage error (exit status 2, "argument --name: expected …"),
raised while the command line is parsed, so no script builds a problem, probes the machine or
prints a traceback before rejecting its arguments. Cross-argument checks stay in each script
(``parser.error``).
"""
import argparse
import math
import os
from pathlib import Path

# Every script writes under bench/results/ of the repository it belongs to, wherever it is run from.
RESULTS = Path(__file__).resolve().parent / "results"


def _number(text, kind):
    """``text`` as a finite float, or an ArgumentTypeError saying what was expected."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
    return value


def _integer(text, kind):
    try:
        return int(text)
    except ValueError:
        pass
    # Sizes are often written 1e6: accept an integral float, never round 2.5 silently.
    value = _number(text, kind)
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
    return int(value)


def positive_int(text):
    """An integer ≥ 1 (sizes, counts, repeats); '1e6' is accepted as 1000000."""
    value = _integer(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_int(text):
    """An integer ≥ 0 (seeds)."""
    value = _integer(text, "an integer ≥ 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return value


def positive_float(text):
    """A finite number > 0 (tolerances)."""
    value = _number(text, "a finite number > 0")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def unit_fraction(text):
    """A number in [0, 1] (fractions of problems)."""
    value = _number(text, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def positive_seconds(text):
    """A number of seconds > 0; 'inf' means no limit."""
    value = _number(text, "a number of seconds > 0 (or inf)")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0 (or inf), got {text!r}")
    return value


def nonnegative_float(text):
    """A finite number ≥ 0 (noise levels, ridge weights)."""
    value = _number(text, "a finite number ≥ 0")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number ≥ 0, got {text!r}")
    return value


def thread_count(text):
    """An integer in [1, NUMBA_NUM_THREADS]: Numba cannot start more threads than that."""
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    kind = f"an integer between 1 and {limit} (NUMBA_NUM_THREADS)"
    value = _integer(text, kind)
    if not 1 <= value <= limit:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
    return value


def comma_list(choices):
    """A type for 'a,b,c' whose every item is one of ``choices``; returns the list of items."""
    def parse(text):
        items = [item.strip() for item in text.split(",")]
        if not text.strip() or any(not item for item in items):
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(choices)}, got {text!r}")
        unknown = [item for item in items if item not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(repr(item) for item in unknown)}: expected a comma-separated "
                f"list of {', '.join(choices)}")
        return items

    parse.__name__ = "comma-separated list"
    return parse


def output_file(text):
    """A file path to write ('' for none): not an existing directory."""
    if text and os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a file path, got the directory {text!r}")
    return text


def output_directory(text):
    """A directory to write into (created if missing): not an existing file."""
    if not text:
        raise argparse.ArgumentTypeError("expected a directory path, got ''")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a directory, got the file {text!r}")
    return text


def add_output_arguments(parser, plots=True):
    """The output options every bench script shares: ``--out DIR`` and (for scripts that plot) ``--no-plot``."""
    parser.add_argument("--out", type=output_directory, default=str(RESULTS), metavar="DIR",
                        help="folder for the CSV/JSON (and PNG) files (default: bench/results/ of this "
                             "repository, wherever the script is run from)")
    if plots:
        parser.add_argument("--no-plot", action="store_true", help="write the data files only (no matplotlib needed)")
