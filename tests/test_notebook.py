"""Executes notebooks/nag_demo.ipynb offline with nbclient, on the quick demo output of tests/test_demo.py.

NAG_OFFLINE=1 makes the online part (official checkpoints, ~6 GB) print its skip message, as it does
without network; NAG_DEMO_OUT makes Part 1 show the shared quick run instead of running it again.
"""
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

from test_demo import quick_demo  # noqa: F401  pylint: disable=unused-import  (the shared session fixture)

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "nag_demo.ipynb"


def _text(cell) -> str:
  return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def test_notebook_offline_part(quick_demo, monkeypatch):  # pylint: disable=redefined-outer-name
  out, _ = quick_demo
  monkeypatch.setenv("NAG_OFFLINE", "1")
  monkeypatch.setenv("NAG_DEMO_OUT", str(out))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  try:
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
  except Exception as e:  # nbclient raises CellExecutionError with the failing cell's traceback
    pytest.fail(f"notebook failed: {e}")
  code = [c for c in nb.cells if c.cell_type == "code"]
  text = "\n".join(_text(c) for c in code)
  assert f"using the existing demo output in {out}" in text
  assert "skipping Part 2" in text and "skipped: sampling the official checkpoints" in text
  pngs = sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
  assert pngs >= 4  # two sample grids, the variants, the KDE and the shift-vs-t plot
