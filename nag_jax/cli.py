"""One error convention for every command: an expected failure is one `error: ...` line and exit code 2.

Expected failures are the ones a user can fix, and only those:
- `UserError` and its subclasses (`nag_jax.errors`): every validation in the library raises one;
- argparse / absl flag and ml_collections override errors;
- a missing optional package (`ModuleNotFoundError` of a third-party module), with the pip name to install;
- an `OSError` (missing, unreadable, unwritable) on a path the user named on the command line, or below it.
Anything else is a bug and keeps its traceback: a `ValueError` or `FileNotFoundError` raised by JAX, Orbax or
numpy inside the run says nothing about the user's input. `--verbose` prints the traceback of expected
failures too.
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import traceback
from typing import Callable, Iterable, Sequence

from nag_jax.errors import UserError

EXIT_USAGE = 2
VERBOSE_FLAG = "--verbose"
# Optional packages and what to install for them (pip names); any other missing third-party module is
# reported the same way, with its own name.
OPTIONAL_PACKAGES = {"tensorflow": "tensorflow-cpu", "tensorflow_datasets": "tensorflow-datasets",
                     "clu": "clu", "torch": "torch", "safetensors": "safetensors", "matplotlib": "matplotlib",
                     "sklearn": "scikit-learn", "array_record": "array-record", "gcsfs": "gcsfs",
                     "libtpu": "jax[tpu]"}


class ArgumentParser(argparse.ArgumentParser):
  """argparse with `--verbose`, whose usage errors raise UserError (one line) instead of printing usage."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.add_argument(VERBOSE_FLAG, action="store_true", help="print tracebacks of expected errors too")

  def error(self, message: str):
    raise UserError(message)


def _absl_message(e: Exception) -> str:
  """The useful sentence of an absl / config_flags error (the last line of an embedded traceback)."""
  text = str(e)
  if "Traceback (most recent call last)" in text:
    flag = text.split(": Error whilst", 1)[0] if ": Error whilst" in text else text.split(":", 1)[0]
    last = [line for line in text.splitlines() if line.strip()][-1]
    return f"{flag}: {last.split(': ', 1)[-1]}" if ": " in last else f"{flag}: {last}"
  return text


def named_paths(argv: Iterable[str]) -> list[str]:
  """The values on a command line that may name paths: every argument, and the value of each KEY=VALUE."""
  out = []
  for arg in argv:
    arg = str(arg)
    out += [v for v in (arg, arg.partition("=")[2]) if v and not v.startswith("-")]
  return out


def _is_named(filename, named: Sequence[str]) -> bool:
  """True when `filename` is one of the `named` paths, lies below one, or is a folder above one."""
  if filename is None:
    return False
  f = os.fspath(filename)
  f = f if "://" in f else os.path.abspath(f)
  for n in named:
    n = n if "://" in n else os.path.abspath(n)
    a, b = f.rstrip("/"), n.rstrip("/")
    if a == b or a.startswith(b + "/") or b.startswith(a + "/"):
      return True
  return False


def message(e: BaseException, named: Sequence[str] = ()) -> str | None:
  """The one-line message of an expected failure, or None when `e` is a bug (keep the traceback).

  `named`: the paths the user named (`named_paths` of the command line); an OSError elsewhere is a bug.
  """
  if isinstance(e, ModuleNotFoundError):
    top = (e.name or "").split(".")[0]
    if not top or top == "nag_jax":
      return None  # a module of this project is missing: a broken install or a bug
    return (f"this needs the optional package {top!r}, which is not installed "
            f"(pip install {OPTIONAL_PACKAGES.get(top, top)})")
  if _is_absl_error(e):
    text = _absl_message(e)
  elif isinstance(e, UserError):
    text = str(e) or type(e).__name__
  elif isinstance(e, OSError) and _is_named(e.filename, named):
    text = f"{e.filename}: {e.strerror}" if e.strerror else str(e)
  else:
    return None
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[0] if lines else type(e).__name__


def _is_absl_error(e: BaseException) -> bool:
  flags_errors = sys.modules.get("absl.flags._exceptions")
  return flags_errors is not None and isinstance(e, flags_errors.Error)


def wants_verbose(argv: Sequence[str] | None) -> bool:
  """True when the command line (or sys.argv when None) asks for tracebacks."""
  return VERBOSE_FLAG in (sys.argv[1:] if argv is None else argv)


def run(fn: Callable[..., int | None], *args, verbose: bool = False, named: Sequence[str] = (),
        **kwargs) -> int:
  """Calls fn; returns its code (None -> 0), or prints one `error: ...` line and returns 2 on an expected failure.

  `named`: the paths the user named (see `message`); a bug is re-raised with its traceback.
  """
  try:
    code = fn(*args, **kwargs)
  except Exception as e:  # pylint: disable=broad-except  (bugs are re-raised below)
    text = message(e, named)
    if text is None:
      raise
    if verbose:
      traceback.print_exc()
    print(f"error: {text}", file=sys.stderr)
    return EXIT_USAGE
  return 0 if code is None else int(code)


def entry_point(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
  """Decorates an argparse command's `main(argv)`: every expected failure becomes one line and code 2."""

  @functools.wraps(main)
  def wrapped(argv: Sequence[str] | None = None) -> int:
    named = named_paths(sys.argv[1:] if argv is None else argv)
    return run(main, argv, verbose=wants_verbose(argv), named=named)

  return wrapped


def parse_absl_flags(argv: list[str], flag_values=None) -> list[str]:
  """absl flag parsing for `app.run(flags_parser=...)`: flag and config override errors raise UserError.

  A config file that fails to load (unknown preset, missing file) is touched here, so its error is
  reported before any work rather than on first use.
  """
  from absl import flags  # pylint: disable=import-outside-toplevel  (absl only for absl commands)
  fv = flags.FLAGS if flag_values is None else flag_values
  argv = [a for a in argv if a != VERBOSE_FLAG]
  try:
    rest = fv(argv)
    for name in fv:
      value = fv[name].value
      if type(value).__name__ == "_ErrorConfig":  # config_flags defers a config file's load error
        value.keys()
  except flags.Error as e:
    raise UserError(_absl_message(e)) from e
  except (AttributeError, KeyError) as e:  # config_flags: an override of a key the config lacks
    raise UserError(_unknown_key_message(e, argv)) from e
  except (OSError, ValueError, TypeError) as e:  # a config file that cannot be read
    raise UserError(f"cannot load the config: {' '.join(str(e).split())}") from e
  return rest


def _unknown_key_message(e: Exception, argv: list[str]) -> str:
  """'unknown config key --config.a.b (Did you mean ...?)' from config_flags' AttributeError / KeyError."""
  inner: BaseException = e
  while inner.args and isinstance(inner.args[0], BaseException):  # AttributeError(KeyError(message))
    inner = inner.args[0]
  text = inner.args[0] if inner.args and isinstance(inner.args[0], str) else str(inner)
  lines = [line.strip().strip("'\"") for line in text.splitlines() if line.strip()]
  key = lines[0] if lines else ""
  overrides = [a.split("=")[0] for a in argv if re.match(r"--\w+\.", a)]
  named = [o for o in overrides if key in o.split(".")] or overrides
  hint = f" ({' '.join(lines[1:])})" if len(lines) > 1 else ""
  return f"unknown config key {', '.join(named) or key}{hint}"


def absl_main(main: Callable[[list[str]], int | None]) -> None:
  """Runs an absl command (`app.run(main)`) under the error convention and exits with its code."""
  from absl import app  # pylint: disable=import-outside-toplevel
  verbose = wants_verbose(None)

  def start() -> int | None:
    try:
      app.run(main, argv=[a for a in sys.argv if a != VERBOSE_FLAG], flags_parser=parse_absl_flags)
    except SystemExit as e:  # app.run exits with main's return value
      if e.code is None or isinstance(e.code, int):
        return e.code
      raise
    return 0

  sys.exit(run(start, verbose=verbose, named=named_paths(sys.argv[1:])))


def load_config_file(spec: str):
  """The ConfigDict of "path/to/config.py[:ARG]" (as --config of `nag_jax.main` reads it): get_config(ARG)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  from nag_jax.errors import PathError  # pylint: disable=import-outside-toplevel
  path, sep, arg = spec.partition(".py:")
  path = pathlib.Path(path + ".py" if sep else spec)
  if not path.is_file():
    raise PathError(f"config file {path} not found")
  module_spec = importlib.util.spec_from_file_location(f"nag_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path} has no get_config()")
  return module.get_config(arg) if sep else module.get_config()
