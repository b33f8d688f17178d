"""The README and docs/ say what works: every command in them parses with the command's real parser (the configs
they name load, with their overrides), every Python block compiles and its imports exist, every pip extra is one
setup.py defines, every relative link resolves, and the README stays a guide (at most 300 lines).

Nothing is run: a misspelt flag, config key or module fails here instead of in a user's terminal.
"""
import ast
import importlib
import pathlib
import re
import shlex

import pytest
from absl import flags
from ml_collections import config_flags

from nag_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CONFIG_DOCS = sorted((REPO / "configs").glob("*.py"))
ARGPARSE = {"convert": "nag_jax.convert", "convert_vae": "nag_jax.convert_vae", "export": "nag_jax.export",
            "extract_latents": "nag_jax.extract_latents", "evaluate": "nag_jax.evaluate",
            "analyze_noise_shift": "nag_jax.analyze_noise_shift", "dry_run": "nag_jax.dry_run",
            "demo": "nag_jax.demo.__main__", "selftest": "nag_jax.selftest"}
ABSL = {"main": ("workdir",), "sample": ()}


def blocks(path: pathlib.Path, lang: str) -> list[str]:
  return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), re.S)


def shell_lines(text: str) -> list[str]:
  """Logical lines of a shell block: continuations joined, comments dropped."""
  text = text.replace("\\\n", " ")
  return [line for line in (shlex.split(raw, comments=True) for raw in text.splitlines() if "-m nag_jax." in raw)
          if line]


def nag_commands() -> list[tuple[str, str, list[str]]]:
  """(where, command, argv) of every `python -m nag_jax.X ...` in the docs' bash blocks and the configs' docstrings."""
  found = []
  sources = [(p.name, block) for p in DOCS for block in blocks(p, "bash")]
  sources += [(p.name, ast.get_docstring(ast.parse(p.read_text())) or "") for p in CONFIG_DOCS]
  for where, text in sources:
    for tokens in shell_lines(text):
      for i in range(len(tokens) - 2):
        if tokens[i].startswith("python") and tokens[i + 1] == "-m" and tokens[i + 2].startswith("nag_jax."):
          found.append((where, tokens[i + 2].split(".", 1)[1], tokens[i + 3:]))
  return found


COMMANDS = nag_commands()


def test_the_docs_hold_commands_of_every_kind():
  kinds = {command for _, command, _ in COMMANDS}
  assert {"main", "sample", "convert", "evaluate", "extract_latents", "selftest", "dry_run"} <= kinds, kinds


@pytest.mark.parametrize("where, command, argv", COMMANDS,
                         ids=[f"{w}:{c}:{i}" for i, (w, c, _) in enumerate(COMMANDS)])
def test_every_documented_command_parses(where, command, argv):
  if command in ARGPARSE:
    module = importlib.import_module(ARGPARSE[command])
    module.parse_args(argv)  # UserError on an unknown flag, a bad choice or a bad type
    return
  assert command in ABSL, f"{where}: unknown command nag_jax.{command}"
  argv = ["prog", *(a.replace("configs/", f"{REPO}/configs/", 1) if a.startswith("configs/") else a for a in argv)]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True, sys_argv=argv)
  for name in ABSL[command]:
    flags.DEFINE_string(name, None, "", flag_values=fv)
  rest = cli.parse_absl_flags(argv, flag_values=fv)  # loads the config, applies every override
  assert rest == ["prog"], f"{where}: stray arguments {rest[1:]}"
  assert fv["config"].value is not None, f"{where}: no --config"
  for name in ABSL[command]:
    assert fv[name].value is not None, f"{where}: no --{name}"


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_python_blocks_compile_and_import_what_exists(path):
  for block in blocks(path, "python"):
    tree = ast.parse(block)
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module:
        module = importlib.import_module(node.module)
        for alias in node.names:
          assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
              f"{path.name}: {node.module} has no {alias.name}")
      elif isinstance(node, ast.Import):
        for alias in node.names:
          importlib.import_module(alias.name)


def test_pip_extras_exist():
  setup = (REPO / "setup.py").read_text()
  extras = set(re.findall(r'^\s+"(\w+)": \[', setup, re.M))
  for path in DOCS + [REPO / "launch" / "tpu_pod.sh", REPO / "launch" / "slurm_gpu.sh"]:
    for group in re.findall(r'-e ["\']?\.\[([\w,]+)\]', path.read_text()):
      assert set(group.split(",")) <= extras, f"{path.name}: extras {group} (setup.py has {sorted(extras)})"


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_relative_links_resolve(path):
  for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
    if re.match(r"[a-z]+://|#|mailto:", target):
      continue
    assert (path.parent / target.split("#")[0]).exists(), f"{path.name}: broken link {target}"


def test_readme_is_a_guide():
  text = (REPO / "README.md").read_text()
  assert len(text.splitlines()) <= 300
  order = ["## What nag_jax gives", "## Install", "## Quick start", "## Reproducing the paper", "## Configs",
           "## Scale out", "## Troubleshooting", "## Citation", "## Licence"]
  assert [text.index(h) for h in order] == sorted(text.index(h) for h in order)
  assert "Normalized Attention Guidance" in text.split("## What nag_jax gives")[0]
