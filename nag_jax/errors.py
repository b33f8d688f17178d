"""The expected failures: what the commands report as one `error: ...` line (see `nag_jax.cli`).

Everything else that escapes a command is a bug and keeps its traceback: a `ValueError` raised by JAX, Orbax
or numpy inside a run says nothing about the user's input.
"""


class UserError(ValueError):
  """Bad input (a flag, a value, a file, a destination); the message names it in one sentence.

  It subclasses ValueError so that Python callers catching ValueError keep working; the commands tell it
  apart from other ValueErrors.
  """


class PathError(UserError, FileNotFoundError):
  """A file or folder the user named is missing or is not what it should be."""


class NonFiniteError(UserError, FloatingPointError):
  """A run produced NaN or infinite values (loss, gradients, parameters): the settings, not the code."""
