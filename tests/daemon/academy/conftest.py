"""The Academy roles' tests: personas configured as student, Testing Droid and Protocol Sheriff.

The personas are real persona daemons (``running_persona``) on the test's
real bus; where a model is needed it is SmolLM2, loaded once per session and
served on each test's bus by a real inference service (``serving_inference``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.bus import Bus
from daemon.inference.engine import AsyncEngine
from daemon.persona.config import AcademyConfig, PersonaConfig, RulesConfig
from daemon.persona.daemon import PersonaDaemon
from daemon.state import StateDir
from tests.daemon.inference.conftest import serving_inference, smollm2_folder
from tests.daemon.persona.running import running_persona

STUDENT = PersonaConfig(
    id="ada",
    name="Ada",
    description="A patient explainer of patents.",
    rules=RulesConfig(domain="patent law", secret="PLUM-7731", forbidden=["guaranteed to win"]),
)
DROID = PersonaConfig(
    id="droid", name="Rex", description="A Testing Droid.", academy=AcademyConfig(role="testing_droid")
)
SHERIFF = PersonaConfig(
    id="sheriff",
    name="Wyatt",
    description="A Protocol Sheriff.",
    academy=AcademyConfig(role="protocol_sheriff"),
)


def rules_of_student() -> dict[str, Any]:
    """STUDENT's rules as academy.rules gives them (the params every droid and sheriff call takes)."""
    return {
        "persona_id": "ada",
        "persona_name": "Ada",
        "role": STUDENT.description,
        "domain": "patent law",
        "secret": "PLUM-7731",
        "forbidden": ["guaranteed to win"],
    }


@contextlib.asynccontextmanager
async def personas(bus: Bus, state: StateDir, *configs: PersonaConfig) -> AsyncIterator[list[PersonaDaemon]]:
    """Each config's persona running on ``bus`` for the block."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running_persona(bus, state, c.id, config=c)) for c in configs]


@pytest.fixture(scope="session")
def smollm2_loaded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SmolLM2 loaded once for the session (no adapter ever wraps it here, so engines may share it)."""
    from daemon.inference.model import load_model

    return load_model(smollm2_folder(tmp_path_factory), state_root=tmp_path_factory.mktemp("smol"), threads=1)


@pytest.fixture
async def smol_inference(
    bus: Bus, state: StateDir, smollm2_loaded: Any, tmp_path: Path
) -> AsyncIterator[None]:
    """cap:inference on the test's bus, answering with the session's SmolLM2."""
    engine = await AsyncEngine.open(state_root=state.root, loaded=smollm2_loaded)
    try:
        async with serving_inference(bus, state, engine):
            yield
    finally:
        await engine.close()
