"""Errors the CLI turns into a one-line reason and a meaningful exit code."""


class PipelineError(Exception):
    exit_code = 1


class ConfigError(PipelineError):
    """A bad config file, key, value or override (exit 2)."""

    exit_code = 2


class InputError(PipelineError):
    """A missing or unusable input (exit 3)."""

    exit_code = 3


class StageFailed(PipelineError):
    """A stage's task failed (exit 1)."""

    exit_code = 1
