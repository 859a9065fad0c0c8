"""Packaging for kd_toolkit (distribution name ``kd-toolkit``)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

_HERE = Path(__file__).parent
_VERSION = re.search(r'__version__ = "([^"]+)"', (_HERE / "kd_toolkit" / "__init__.py").read_text()).group(1)

setup(
    name="kd-toolkit",
    version=_VERSION,
    description="Knowledge distillation, FitNets and early-exit networks on PyTorch Lightning.",
    long_description=(_HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",  # an SPDX expression; with a license classifier as well, setuptools warns at install
    python_requires=">=3.10",
    packages=find_packages(include=["kd_toolkit", "kd_toolkit.*", "knowledge_distilation"]),
    include_package_data=True,
    install_requires=[
        "torch>=2.6",  # the first torch whose torch.load defaults to weights_only=True
        "torchvision",
        "pytorch-lightning>=2.2",
        "torchmetrics>=1.0",
        "comet-ml",
        "tensorboard",
        "matplotlib",
        "scikit-learn",
        "rich",
        "jsonargparse[signatures]>=4.27",
        "pyyaml",
    ],
    extras_require={
        "dev": ["pytest>=7", "pytest-timeout", "onnx", "onnxscript", "onnxruntime", "ruff", "mypy"],
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
    },
    entry_points={"console_scripts": ["kd-toolkit=kd_toolkit.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
