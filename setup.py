"""mmjax: multimodal models (ViT, LLaVA, MAGVIT-v2 tokenizer, D3PM/MaskGIT, Show-o) in JAX/Flax."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.4",
    "grain>=0.2.18",
    "ml-collections>=1.1.0",
    "tensorflow-datasets>=4.9.10",
    "array-record>=0.8",
    "pyarrow>=14",            # parquet corpora: img2dataset's parquet output, RefinedWeb
    "safetensors>=0.4",
    "numpy>=1.26",
    "pillow>=10.0",
    "scikit-learn>=1.4",      # ships the real handwritten digits used by configs/vit/digits.py
    "tokenizers>=0.19",
    "sentencepiece>=0.2",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    "importlib_resources>=6.0",  # tensorflow-datasets preparation needs it but does not declare it
]

# colab/*.ipynb beyond the package: plots, scikit-image's photos, and the kernel tests/test_notebooks.py runs them in.
NOTEBOOKS = ["scikit-image>=0.22", "matplotlib>=3.8", "ipykernel>=6.29", "nbclient>=0.10", "nbformat>=5.10"]

setup(
    name="mmjax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["mmjax", "mmjax.*"]),
    install_requires=CORE,
    extras_require={
        # jax[tpu] brings libtpu, which compiles for TPU slices on any machine (tests/train/test_preflight.py).
        # Its extra pins the libtpu release of the *installed* jax, so a newer jax gets its own libtpu.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "jax[tpu]>=0.10.2", *NOTEBOOKS],
        # Parity tests against the PyTorch references; `pip install torch==2.13.0` first for a CPU-only build.
        "parity": ["torch>=2.4", "transformers>=4.50"],
        "notebooks": NOTEBOOKS,
        "gpu": ["jax[cuda12]>=0.10.2"],
        # Cloud TPU VMs: libtpu, and gs:// workdirs (gcsfs for etils.epath, google-cloud-storage for TensorBoard).
        "tpu": ["jax[tpu]>=0.10.2", "gcsfs>=2024.2", "google-cloud-storage>=2.14"],
    },
)
