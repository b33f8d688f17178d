"""Converter fuzz: seeded damaged variants of a tiny valid checkpoint either convert or fail in one line.

Every variant is converted over an existing converted model with `--overwrite`: a failure must leave
it byte for byte as it was (listing and checksums of the whole parent folder, so no staging leftovers),
and a success must leave only the new model, loadable and finite.
"""
import collections
import hashlib
import io
import pathlib

import numpy as np
import pytest

from nag_jax import checkpoints, convert
from tests.torch_helpers import random_reference, state_dict_numpy, torch

SEED = 12
COUNTS = {"truncate_pt": 24, "truncate_safetensors": 12, "flip_pt": 60, "flip_safetensors": 24,
          "swap_tensor": 40, "rename_keys": 20, "non_tensor": 20, "foreign_class": 10, "garbage": 10}
DTYPES = ["float16", "bfloat16", "float64", "int64", "int8", "bool", "complex64", "uint8"]


class Foreign:
  """A class no allow-list knows."""


def _save_pt(obj) -> bytes:
  buf = io.BytesIO()
  torch.save(obj, buf)
  return buf.getvalue()


def _save_safetensors(tensors: dict) -> bytes:
  from safetensors.torch import save  # pylint: disable=import-outside-toplevel
  return save({k: v.contiguous().clone() for k, v in tensors.items()})


def _pt_regions(data: bytes) -> tuple[list, list]:
  """Byte ranges of a torch zip file: (the pickle, everything else but the tensor data: headers, directory)."""
  import zipfile  # pylint: disable=import-outside-toplevel
  with zipfile.ZipFile(io.BytesIO(data)) as z:
    records = sorted((i.header_offset, i) for i in z.infolist())
  pickle, other, pos = [], [], 0
  for offset, info in records:
    start = offset + 30 + len(info.filename.encode()) + len(info.extra)
    if info.filename.endswith("data.pkl"):
      pickle.append((start, start + info.compress_size))
    elif "/data/" in info.filename:
      other.append((pos, start))
      pos = start + info.compress_size
  other.append((pos, len(data)))
  return pickle, [(a, b) for a, b in other if b > a]


def _flip(data: bytes, rng, ranges) -> bytes:
  buf = bytearray(data)
  for _ in range(int(rng.integers(1, 5))):
    a, b = ranges[int(rng.integers(len(ranges)))]
    buf[int(rng.integers(a, b))] ^= 1 << int(rng.integers(8))
  return bytes(buf)


def variants(sd: dict, rng) -> list[tuple[str, str, bytes]]:
  """(kind, suffix, file bytes) for every damaged variant, from one seeded generator."""
  tensors = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items())
  pt, st = _save_pt(tensors), _save_safetensors(tensors)
  pickle, structure = _pt_regions(pt)
  st_header = 8 + int.from_bytes(st[:8], "little")
  keys = list(tensors)
  out = []
  for _ in range(COUNTS["truncate_pt"]):
    out.append(("truncate_pt", ".pt", pt[:int(rng.integers(0, len(pt)))]))
  for _ in range(COUNTS["truncate_safetensors"]):
    out.append(("truncate_safetensors", ".safetensors", st[:int(rng.integers(0, len(st)))]))
  for _ in range(COUNTS["flip_pt"]):  # mostly the pickle, then the zip structure, some anywhere (tensor data)
    where = rng.random()
    out.append(("flip_pt", ".pt", _flip(pt, rng, pickle if where < 0.6 else structure if where < 0.85
                                        else [(0, len(pt))])))
  for _ in range(COUNTS["flip_safetensors"]):
    out.append(("flip_safetensors", ".safetensors",
                _flip(st, rng, [(0, st_header)] if rng.random() < 0.85 else [(0, len(st))])))
  for _ in range(COUNTS["swap_tensor"]):
    bad = collections.OrderedDict(tensors)
    k = keys[int(rng.integers(len(keys)))]
    how = ["dtype", "shape", "type", "other_tensor"][int(rng.integers(4))]
    if how == "dtype":
      bad[k] = tensors[k].to(getattr(torch, DTYPES[int(rng.integers(len(DTYPES)))]))
    elif how == "shape":
      t = tensors[k]
      bad[k] = [t.reshape(-1), t[None], t.reshape(-1)[: max(t.numel() - 1, 1)], t.T if t.ndim == 2 else t[..., None]][
          int(rng.integers(4))].contiguous()
    elif how == "type":
      bad[k] = [3, 0.5, "weights", None, [1.0, 2.0], {"w": tensors[k]}][int(rng.integers(6))]
    else:
      bad[k] = tensors[keys[int(rng.integers(len(keys)))]]
    as_st = how in ("dtype", "shape", "other_tensor") and rng.random() < 0.3 and bad[k].dtype != torch.complex64
    out.append(("swap_tensor", ".safetensors" if as_st else ".pt",
                _save_safetensors(bad) if as_st else _save_pt(bad)))
  for _ in range(COUNTS["rename_keys"]):
    bad = collections.OrderedDict(tensors)
    k = keys[int(rng.integers(len(keys)))]
    new = [k.replace("blocks.0", "blocks.7"), k + "_x", k.upper(), "module." + k, ""][int(rng.integers(5))]
    bad[new] = bad.pop(k)
    if rng.random() < 0.3:
      bad.pop(keys[int(rng.integers(len(keys)))], None)
    out.append(("rename_keys", ".pt", _save_pt(bad)))
  for _ in range(COUNTS["non_tensor"]):
    obj = [list(tensors.values()), tensors[keys[0]], {"ema": [1, 2]}, {"model": {"a": "b"}}, 7, None,
           {1: tensors[keys[0]]}, {"ema": {**tensors, "extra": {"nested": 1}}}][int(rng.integers(8))]
    out.append(("non_tensor", ".pt", _save_pt(obj)))
  for _ in range(COUNTS["foreign_class"]):
    obj = [{"ema": tensors, "x": Foreign()}, Foreign(), {**tensors, keys[0]: Foreign()}][int(rng.integers(3))]
    out.append(("foreign_class", ".pt", _save_pt(obj)))
  for _ in range(COUNTS["garbage"]):
    out.append(("garbage", [".pt", ".safetensors"][int(rng.integers(2))],
                rng.integers(0, 256, int(rng.integers(0, 4096)), dtype=np.uint8).tobytes()))
  return out


def snapshot(folder: pathlib.Path) -> dict:
  """Relative path -> sha256 of every file (and '/' for every folder) under `folder`."""
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
          for p in sorted(folder.rglob("*"))}


def _finite(tree) -> bool:
  if isinstance(tree, dict):
    return all(_finite(v) for v in tree.values())
  return bool(np.isfinite(np.asarray(tree)).all())


@pytest.fixture(scope="module")
def tiny_sd():
  ref = random_reference(seed=3, input_size=4, patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=3)
  return state_dict_numpy(ref)


def test_every_damaged_checkpoint_converts_or_fails_in_one_line(tiny_sd, tmp_path, capsys):
  rng = np.random.default_rng(SEED)
  cases = variants(tiny_sd, rng)
  assert len(cases) == sum(COUNTS.values())
  src_dir, out_parent = tmp_path / "src", tmp_path / "out"
  src_dir.mkdir()
  out_parent.mkdir()
  dst = out_parent / "model"
  clean = src_dir / "clean.pt"
  clean.write_bytes(_save_pt(collections.OrderedDict((k, torch.from_numpy(v)) for k, v in tiny_sd.items())))
  args = ["--dst", str(dst), "--family", "dit", "--num-heads", "2", "--overwrite"]
  assert convert.main(["--src", str(clean), *args]) == 0
  before = snapshot(out_parent)
  outcomes, tracebacks, bad_errors = collections.Counter(), [], []
  for i, (kind, suffix, data) in enumerate(cases):
    src = src_dir / f"case{i}{suffix}"
    src.write_bytes(data)
    capsys.readouterr()
    try:
      code = convert.main(["--src", str(src), *args])
    except Exception as e:  # pylint: disable=broad-except  # a traceback: counted, reported below
      tracebacks.append(f"case {i} ({kind}): {type(e).__name__}: {e}")
      outcomes[kind, "traceback"] += 1
      continue
    err = capsys.readouterr().err.strip().splitlines()
    if code == 0:
      outcomes[kind, "converted"] += 1
      assert sorted(p.name for p in out_parent.iterdir()) == ["model"], f"case {i} ({kind}) left staging"
      _, params, _ = checkpoints.load(dst)
      assert _finite(params), f"case {i} ({kind}) converted non-finite weights"
      before = snapshot(out_parent)
    else:
      outcomes[kind, "error"] += 1
      if code != 2 or len(err) != 1 or not err[0].startswith("error: "):
        bad_errors.append(f"case {i} ({kind}): exit {code}, stderr {err}")
      elif kind in ("truncate_pt", "truncate_safetensors", "garbage") and "trust-pickle" in err[0]:
        bad_errors.append(f"case {i} ({kind}): a damaged file must not advise --trust-pickle: {err[0]}")
      elif kind == "foreign_class" and not ("Foreign" in err[0] and "RUN code" in err[0]):
        bad_errors.append(f"case {i} ({kind}): the refused global and what --trust-pickle does: {err[0]}")
      assert snapshot(out_parent) == before, f"case {i} ({kind}) touched the destination"
    src.unlink()
  totals = collections.Counter()
  for (_, outcome), n in outcomes.items():
    totals[outcome] += n
  print(f"\nconverter fuzz, {len(cases)} cases: {dict(totals)}; by kind: {dict(sorted(outcomes.items()))}")
  assert not tracebacks, tracebacks
  assert not bad_errors, bad_errors
  assert totals["converted"] > 0 and totals["error"] > 0.5 * len(cases)
