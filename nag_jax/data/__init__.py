"""Input pipelines: grain sources (arrays, image folders, TFDS, precomputed latents) and iterators."""
from nag_jax.data.image_ops import center_crop_arr
from nag_jax.data.latents import LatentSource, write_latents
from nag_jax.data.pipeline import make_train_iterator, read_options, steps_per_epoch
from nag_jax.data.sources import ArraySource, FolderSource, TfdsSource, digits_arrays
