"""The quick demo end to end: report structure and sanity of its numbers (not a claimed improvement).

The quick run happens once per session and is shared with tests/test_notebook.py (also across
pytest-xdist workers, through a file lock in the session's shared temp folder).
"""
import json
import math
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.session_helpers import once_per_session

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("## Headline", "## What the numbers show", "## Setup", "## All metrics", "## Time scaling",
            "## Noise shift", "## Samples", "## Timing")


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> tuple[pathlib.Path, str]:
  """(output folder, stdout) of `python -m nag_jax.demo --quick`, run once per test session."""
  with once_per_session(tmp_path_factory, "nag_demo_quick") as root:
    out = root / "out"
    if not (out / "stdout.txt").is_file():
      proc = subprocess.run([sys.executable, "-m", "nag_jax.demo", "--quick", "--no-progress", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
      assert proc.returncode == 0, f"quick demo failed:\n{proc.stderr[-4000:]}"
      (out / "stdout.txt").write_text(proc.stdout)
  return out, (out / "stdout.txt").read_text()


def _numbers(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _numbers(v)
  elif isinstance(tree, list):
    for v in tree:
      yield from _numbers(v)
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield tree


def test_report_structure_and_pictures(quick_demo):
  out, stdout = quick_demo
  report = (out / "report.md").read_text()
  for section in SECTIONS:
    assert section in report, section
  for label in ("unguided", "CFG 1.5", "NAG w=1", "NAG w=2", "NAG w=2 + CFG 1.2"):
    assert f"| {label} |" in report and f"| {label} |" in stdout, label
  images = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
  assert any("densities.png" in i for i in images) and any("shift_curves.png" in i for i in images)
  runs = json.loads((out / "results.json").read_text())["config"]["runs"]
  assert sum(i.startswith("samples_") for i in images) == len(runs)
  for image in images:
    assert (out / image).is_file() and (out / image).read_bytes()[:4] == b"\x89PNG", image


def test_numbers_are_finite_and_sane(quick_demo):
  out, _ = quick_demo
  results = json.loads((out / "results.json").read_text())
  assert all(math.isfinite(v) for v in _numbers(results))
  assert results["classifier"]["test_accuracy"] >= 0.9
  seeds = results["config"]["num_seeds"]
  assert seeds >= 3
  for variant in ("main", "paper", "nodrop"):
    for run in results["grid"][variant].values():
      for cell in run.values():
        assert len(cell["fd"]) == seeds and min(cell["fd"]) >= 0
        assert all(0 <= v <= 1 for m in ("accuracy", "precision", "recall") for v in cell[m])
  assert set(results["grid"]["main"]["SDE 20"]) == {"none", "cfg", "nag1", "nag2", "nag_cfg"}
  shift = results["noise_shift"]["w1"]
  assert {"forward", "none", "nag"} <= set(shift["per_step"])
  assert len(shift["selected"]) == len(results["config"]["shift_t"])


STUDY_SECTIONS = ("## Claim 1: NAG on top of the best CFG", "## Claim 2: NAG's gain as the steps grow",
                  "## Noise shift with intervals", "## NAG beside its peers", "## bfloat16 sampling", "## Weight sweep",
                  "## Guidance intervals", "## FD against precision and recall", "## Timing")


@pytest.fixture(scope="module")
def quick_study(quick_demo, tmp_path_factory) -> tuple[pathlib.Path, subprocess.CompletedProcess]:
  """`--study --quick` on a copy of the quick demo's trained models (its folder stays untouched)."""
  out = tmp_path_factory.mktemp("study")
  shutil.copytree(quick_demo[0] / "runs", out / "runs")
  proc = subprocess.run([sys.executable, "-m", "nag_jax.demo", "--study", "--quick", "--no-progress", "--out", str(out)],
                        cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, f"quick study failed:\n{proc.stderr[-4000:]}"
  return out, proc


def test_study_report_structure_and_finite_values(quick_study):
  out, proc = quick_study
  report = (out / "study" / "report.md").read_text()
  for section in STUDY_SECTIONS:
    assert section in report, section
  assert "Student-t" in report and "min wall" in report
  assert any(w in proc.stdout for w in ("beats", "is worse than", "does not separate from"))
  assert "SDE: NAG alone" in proc.stdout and "ODE: NAG alone" in proc.stdout
  images = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
  assert sorted(images) == ["fd_precision_recall.png", "kde.png", "shift_curves.png"]
  for image in images:
    assert (out / "study" / image).read_bytes()[:4] == b"\x89PNG", image
  results = json.loads((out / "study" / "results.json").read_text())
  assert all(math.isfinite(v) for v in _numbers(results))
  assert results["models"]["reused"]["main seed 0"] and not results["models"]["reused"]["weak seed 0"]
  cells = results["cells"]["SDE 10"]
  expected = {"none", "nag1", "cfg1.5", "cfg1.5+nag1", "cfg1.5+nag1_nested", "nag1_early", "nag1_late",
              "cfg1.5_early", "cfg1.5_late", "cfg1.5+auto1.5", "cfg1.5+tsg1",
              "cfg1.5+es", "cfg1.5+ts", "cfgzero1.5", "apg1.5"}
  assert set(cells) == expected
  for cell in cells.values():
    assert len(cell["fd"]) == 2 and len(cell["runs"]) == 2 and min(cell["fd"]) >= 0
  assert set(results["cells"]["ODE 10"]) == {"none", "cfg1.5", "nag1", "cfg1.5+nag1"}
  bf16 = results["bfloat16"]["SDE 10"]["cfg1.5+nag1"]
  assert bf16["runs"] == cells["cfg1.5+nag1"]["runs"] and bf16["fd"] != cells["cfg1.5+nag1"]["fd"]
  assert results["rows"]["cfg1.5+nag1_nested"] == 4 and results["rows"]["cfg1.5+auto1.5"] == 3 and results["rows"]["cfg1.5+es"] == 2
  shift = results["noise_shift"]["per_level"]
  assert len(shift["bias"]) == len(shift["level"]) == len(shift["reduction"]) and shift["bias"][0][1] > 0
  assert "| ν |" in report and "| method |" in report


def test_study_resumes_only_results_it_reproduces(quick_study, tmp_path, capsys):
  """Resuming a finished quick study on the same machine re-scores its first unguided run identically and adds
  nothing; a partial.json this machine scores differently (other CPU or XLA) is refused: code 2, one error line,
  the file and the trained models left as they were."""
  from nag_jax.demo.__main__ import main
  from tests.test_cli_errors import listing, one_error
  out, _ = quick_study
  partial = json.loads((out / "study" / "partial.json").read_text())
  for name, tamper in (("same", 1.0), ("other", 1 + 1e-4)):
    shutil.copytree(out / "runs", tmp_path / name / "runs")
    (tmp_path / name / "study").mkdir()
    partial["cells"]["SDE 10"]["none"]["fd"][0] *= tamper
    (tmp_path / name / "study" / "partial.json").write_text(json.dumps(partial))
  assert main(["--study", "--quick", "--no-progress", "--out", str(tmp_path / "same")]) == 0
  resumed, first = (json.loads((o / "study" / "results.json").read_text()) for o in (tmp_path / "same", out))
  assert resumed["cells"] == first["cells"] and resumed["total"]["sessions"] == 2
  assert resumed["total"]["wall_s"] > first["total"]["wall_s"] and resumed["timing"].keys() == first["timing"].keys()
  capsys.readouterr()
  before = listing(tmp_path / "other")
  code = main(["--study", "--quick", "--no-progress", "--out", str(tmp_path / "other")])
  one_error(capsys, code, "partial.json was computed with other numerics", "unguided SDE 10 FD")
  assert listing(tmp_path / "other") == before
