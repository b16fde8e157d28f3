"""The project's error types: one base the CLI catches and prints as a single line.

Every error raised for bad input (a bundle, a media file, a config, a device) is an
`AvemoError` whose message names the thing that is wrong, the problem and the fix, in one
line. The CLI prints `str(err)` and exits with code 2; anything else is a bug.
"""
from __future__ import annotations


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
