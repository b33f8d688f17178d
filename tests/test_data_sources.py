"""Tests of the data sources: ADM center crop, image folders, TFDS, digits, latents round trip."""
import json

import grain
import jax
import numpy as np
from PIL import Image
import pytest

from nag_jax import data
from nag_jax.data import latents as latents_lib


def _random_image(rng, width, height, mode="RGB"):
  shape = (height, width, 3) if mode == "RGB" else (height, width)
  return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _write_folder(root, sizes_per_class, rng):
  """Writes PNGs root/<class>/<i>.png; returns {path: PIL image} in writing order."""
  written = {}
  for name, sizes in sizes_per_class.items():
    (root / name).mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
      image = _random_image(rng, w, h)
      image.save(root / name / f"{i}.png")
      written[str(root / name / f"{i}.png")] = image
  return written


@pytest.mark.parametrize("size,steps", [
    # 70x50 -> 16: short side 50 >= 32 so one BOX halving to 35x25 (25 < 32 stops), BICUBIC scale 16/25
    # gives round(22.4)=22 x 16, then the centre crop starts at x=(22-16)//2=3.
    (16, lambda im: im.resize((35, 25), Image.BOX).resize((22, 16), Image.BICUBIC)
     .crop((3, 0, 19, 16))),
    # 70x50 -> 24: 50 >= 48, one halving to 35x25; scale 24/25 gives round(33.6)=34 x 24, crop x=5.
    (24, lambda im: im.resize((35, 25), Image.BOX).resize((34, 24), Image.BICUBIC)
     .crop((5, 0, 29, 24))),
    # 70x50 -> 30: 50 < 60, no halving; scale 30/50: 42 x 30, crop x=6.
    (30, lambda im: im.resize((42, 30), Image.BICUBIC).crop((6, 0, 36, 30))),
])
def test_center_crop_arr_matches_the_pil_steps(size, steps):
  image = _random_image(np.random.default_rng(0), 70, 50)
  np.testing.assert_array_equal(np.asarray(data.center_crop_arr(image, size)),
                                np.asarray(steps(image)))


def test_center_crop_arr_keeps_an_image_of_the_target_size():
  image = _random_image(np.random.default_rng(1), 16, 16)
  np.testing.assert_array_equal(np.asarray(data.center_crop_arr(image, 16)), np.asarray(image))


def test_folder_source_labels_pixels_and_crop(tmp_path):
  rng = np.random.default_rng(0)
  written = _write_folder(tmp_path, {"zebra": [(12, 10)] * 2, "ant": [(12, 10)] * 3}, rng)
  (tmp_path / "ant" / "notes.txt").write_text("not an image")
  source = data.FolderSource(tmp_path)
  assert source.classes == ["ant", "zebra"] and source.num_classes == 2 and len(source) == 5
  for i in range(len(source)):
    record = source[i]
    path = source.files[i]
    assert record["y"] == source.classes.index(path.split("/")[-2])
    np.testing.assert_array_equal(record["x"], np.asarray(written[path]))
  cropped = data.FolderSource(tmp_path, image_size=8)
  np.testing.assert_array_equal(cropped[0]["x"],
                                np.asarray(data.center_crop_arr(written[cropped.files[0]], 8)))
  assert cropped[0]["x"].shape == (8, 8, 3) and cropped[0]["x"].dtype == np.uint8


def test_folder_source_converts_grayscale_to_rgb(tmp_path):
  (tmp_path / "a").mkdir()
  gray = _random_image(np.random.default_rng(0), 8, 8, mode="L")
  gray.save(tmp_path / "a" / "g.png")
  x = data.FolderSource(tmp_path)[0]["x"]
  assert x.shape == (8, 8, 3)
  for c in range(3):
    np.testing.assert_array_equal(x[..., c], np.asarray(gray))


def test_folder_source_bad_inputs(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.FolderSource(tmp_path / "missing")
  with pytest.raises(ValueError, match="no class sub-folders"):
    data.FolderSource(tmp_path)
  rng = np.random.default_rng(0)
  _write_folder(tmp_path / "mixed", {"a": [(8, 8)], "b": [(9, 8)]}, rng)
  with pytest.raises(ValueError, match="mixed sizes"):
    data.FolderSource(tmp_path / "mixed")
  assert data.FolderSource(tmp_path / "mixed", image_size=8)[1]["x"].shape == (8, 8, 3)
  _write_folder(tmp_path / "empty", {"a": [(8, 8)]}, rng)
  (tmp_path / "empty" / "b").mkdir()
  with pytest.raises(ValueError, match="has no images"):
    data.FolderSource(tmp_path / "empty")
  with pytest.raises(ValueError, match="image_size"):
    data.FolderSource(tmp_path / "mixed", image_size=0)


def test_array_source_bad_inputs():
  x = np.zeros((4, 8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match="same length"):
    data.ArraySource(x, np.zeros(3))
  with pytest.raises(ValueError, match="kind"):
    data.ArraySource(x, np.zeros(4), kind="video")
  with pytest.raises(ValueError, match="latents"):
    data.ArraySource(x, np.zeros(4), kind="latent")


def test_digits_arrays_upsample_the_sklearn_digits():
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  x, y = data.digits_arrays(16)
  assert x.shape == (1797, 16, 16, 1) and x.dtype == np.float32
  np.testing.assert_array_equal(y, digits.target)
  # Each 2x2 block repeats one original pixel, mapped from [0, 16] to [-1, 1].
  for di in range(2):
    for dj in range(2):
      np.testing.assert_allclose(x[:, di::2, dj::2, 0], digits.images / 8.0 - 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="multiple of 8"):
    data.digits_arrays(12)


def test_tfds_source_reads_mocked_mnist_as_rgb(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    raw = tfds.data_source("mnist", split="train", data_dir=str(tmp_path), download=False)
    source = data.TfdsSource("mnist", data_dir=str(tmp_path))
    cropped = data.TfdsSource("mnist", data_dir=str(tmp_path), image_size=14)
    assert len(source) == 6 and source.num_classes == 10
    for i in range(6):
      expected = raw[i]
      assert source[i]["y"] == expected["label"]
      np.testing.assert_array_equal(source[i]["x"], np.repeat(expected["image"], 3, axis=-1))
      pil = Image.fromarray(expected["image"][..., 0]).convert("RGB")
      np.testing.assert_array_equal(cropped[i]["x"], np.asarray(data.center_crop_arr(pil, 14)))


def test_tfds_source_not_prepared_is_one_clear_error(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(FileNotFoundError, match="not prepared"):
    data.TfdsSource("mnist", data_dir=str(tmp_path))


def _pool8(images):
  """Fake VAE encoder: 8x8 average pooling of images mapped to [-1, 1], NHWC."""
  x = np.asarray(images, np.float32) / 127.5 - 1.0
  n, h, w, c = x.shape
  return x.reshape(n, h // 8, 8, w // 8, 8, c).mean(axis=(2, 4))


def test_latents_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (10, 16, 24, 3), dtype=np.uint8)
  labels = rng.integers(0, 5, 10)
  seen_shapes = []

  def encode_fn(batch, key):
    assert isinstance(key, jax.Array)
    seen_shapes.append(batch.shape)
    return _pool8(batch)

  source = data.ArraySource(images, labels, num_classes=5)
  out = data.write_latents(source, encode_fn, tmp_path / "lat", key=jax.random.key(0), batch_size=4,
                           records_per_shard=4, metadata={"vae": "fake"})
  # 10 records in batches of 4: the last batch is padded, so the encoder sees one shape.
  assert seen_shapes == [(8, 16, 24, 3)] * 3
  meta = json.loads((out / latents_lib.META_FILE).read_text())
  assert meta["num_shards"] == 3 and meta["latent_shape"] == [2, 3, 3] and meta["vae"] == "fake"
  read = data.LatentSource(out)
  assert len(read) == 10 and read.num_classes == 5 and read.kind == "latent"
  for i in range(10):
    record = read[i]
    assert record["x"].shape == (2, 2, 3, 3) and record["x"].dtype == np.float32
    np.testing.assert_allclose(record["x"][0], _pool8(images[i:i + 1])[0], rtol=1e-6)
    np.testing.assert_allclose(record["x"][1], _pool8(np.fliplr(images[i])[None])[0], rtol=1e-6)
    assert record["y"] == labels[i]
  batch = next(data.make_train_iterator(read, global_batch_size=5, seed=0))
  assert batch["x"].shape == (5, 2, 3, 3) and batch["x"].dtype == np.float32


def test_latent_source_missing_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a latents folder"):
    data.LatentSource(tmp_path / "nothing")
