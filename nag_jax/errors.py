"""The one base class of expected failures: bad input a user can fix, reported as one `error: ...` line."""


class UserError(ValueError):
  """Bad input (a flag, a value, a file, a destination); the message names it in one sentence."""
