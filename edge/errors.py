"""The project's error types: one base the CLI catches and prints as a single line.

Every error raised for bad input (a bundle, a media file, a config, a device) is an
`AvemoError` whose message names the thing that is wrong, the problem and the fix, in one
line. The CLI prints `str(err)` and exits with code 2; anything else is a bug.
`problem_list` writes many problems (bad rows, bad files) as that one line; `in_range` checks
a number given as an option (NaN, infinities and out-of-range values are errors).
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from pathlib import Path

MAX_LISTED = 8
"""How many problems a one-line error spells out before it says '... and N more'."""


class AvemoError(Exception):
    """Bad input or environment, reported to the user as one line (CLI exit code 2)."""


class BundleError(AvemoError):
    """A model bundle is missing, corrupt, inconsistent or uses an unsupported op."""


class MediaError(AvemoError):
    """An audio/video file or stream cannot be read or has the wrong format."""


class ConfigError(AvemoError):
    """A firmware profile, CLI option or setting is invalid."""


class DeviceError(AvemoError):
    """A microphone, camera or runtime backend is unavailable."""


def problem_list(where: str | Path, problems: list[str], fix: str) -> str:
    """One line: `where`, how many problems, the first MAX_LISTED of them, then the fix."""
    listed = "; ".join(problems[:MAX_LISTED])
    more = f"; ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    entries = "entry" if len(problems) == 1 else "entries"
    return f"{where}: {len(problems)} bad {entries}: {listed}{more} ({fix})"


def in_range(name: str, value: object, low: float, high: float, unit: str = "",
             whole: bool = False) -> float | int:
    """`value` when it is a finite number (an integer if `whole`) from `low` to `high`
    inclusive; else a `ConfigError` that names `name` and the valid range."""
    kind = Integral if whole else Real
    if isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value) and low <= value <= high:
        return value
    what = "a whole number" if whole else "a number"
    raise ConfigError(f"{name} must be {what}{unit} from {low:.10g} to {high:.10g}, got {value!r}")
