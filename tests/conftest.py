"""Model fixtures: a tiny generated GGUF (fast) and the real SmolLM2-135M (marked slow)."""

from __future__ import annotations

import pytest

import pyturbo
from tiny_gguf import write_tiny_llama


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """A 2-layer random llama with head size 64 and GQA (2 heads, 1 KV head)."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    with pyturbo.Model(tiny_path) as model:
        yield model


@pytest.fixture(scope="session")
def smol_path():
    return pyturbo.default_model()


@pytest.fixture(scope="session")
def smol_model(smol_path):
    with pyturbo.Model(smol_path) as model:
        yield model
