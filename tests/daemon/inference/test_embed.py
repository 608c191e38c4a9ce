"""inference.embed: the real all-MiniLM-L6-v2, directly and through the inference service on a bus."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from daemon.inference.embed import EMBED_THREAD_NAME, Embedder
from daemon.inference.engine import AsyncEngine
from daemon.inference.service import InferenceService, service_token
from protocol import ErrorCode, RpcError
from protocol.commands.knowledge import EMBED_DIM, EMBED_MODEL, MAX_EMBED_BATCH
from tests.conftest import WAIT, eventually

SENTENCES = [
    "A cat is sleeping on the sofa.",
    "A kitten naps on the couch.",
    "The central bank raised interest rates.",
    "short",
    "A much longer sentence about the weather, which has been rainy and cold for most of the week.",
]


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    running = Embedder(threads=1)
    yield running
    running.close()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_vectors_are_unit_length_and_mean_by_meaning(embedder: Embedder) -> None:
    """384-dim unit vectors; a paraphrase is nearer than an unrelated sentence; on the embed thread."""
    vectors = await embedder.embed(SENTENCES)
    assert [EMBED_DIM] * len(SENTENCES) == [len(v) for v in vectors]
    for vector in vectors:
        assert math.fsum(x * x for x in vector) == pytest.approx(1.0, abs=1e-5)
    assert cosine(vectors[0], vectors[1]) > 0.6 > 0.2 > cosine(vectors[0], vectors[2])
    assert any(t.name.startswith(EMBED_THREAD_NAME) for t in threading.enumerate())


async def test_a_batch_gives_the_same_vectors_as_one_at_a_time(embedder: Embedder) -> None:
    """Padding to the batch's longest text changes nothing: mean pooling weighs by the attention mask.

    In bfloat16 a padded batch takes other kernels, whose rounding differs a little.
    """
    batched = await embedder.embed(SENTENCES)
    for text, vector in zip(SENTENCES, batched, strict=True):
        (alone,) = await embedder.embed([text])
        if embedder.precision == "float32":
            assert alone == pytest.approx(vector, abs=1e-5)
        else:
            assert cosine(alone, vector) > 0.9995


def test_the_encoder_matches_transformers_bert_model() -> None:
    """The written-out forward pass in float32 gives BertModel's mean-pooled vectors to rounding,
    and in bfloat16 stays within 0.999 cosine of them (checked on every machine, native or not)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from daemon.inference.embed import model_dir
    from daemon.inference.minilm import Encoder

    folder = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    reference = AutoModel.from_pretrained(str(folder)).eval()
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        tokens = reference(**encoded)[0]
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        expected = torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1), dim=1)
        exact = Encoder(folder, "float32").embed(encoded["input_ids"], encoded["attention_mask"])
        halved = Encoder(folder, "bfloat16").embed(encoded["input_ids"], encoded["attention_mask"])
    assert float((exact - expected).abs().max()) < 1e-5
    assert float((halved * expected).sum(1).min()) > 0.999


def test_a_folder_that_is_not_the_model_is_unavailable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A folder without the weights or with another architecture: ModelUnavailable naming it, no traceback."""
    from daemon.inference.errors import ModelUnavailable

    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    broken = Embedder(folder=tmp_path)
    try:
        with pytest.raises(ModelUnavailable, match=str(tmp_path)):
            broken.embed_sync(["hello"])
    finally:
        broken.close()


async def test_results_keep_the_callers_order(embedder: Embedder) -> None:
    """Texts run shortest first for padding's sake; the vectors come back in the caller's order."""
    texts = [SENTENCES[4], SENTENCES[3], SENTENCES[0]]
    together = await embedder.embed(texts)
    for text, vector in zip(texts, together, strict=True):
        (alone,) = await embedder.embed([text])
        assert cosine(alone, vector) > 0.9995


async def test_long_text_is_truncated_not_refused(embedder: Embedder) -> None:
    """Text past the model's 256 tokens is cut there (as sentence-transformers does)."""
    long_text = "word " * 800
    (vector,) = await embedder.embed([long_text])
    (cut,) = await embedder.embed(["word " * 600])
    assert vector == pytest.approx(cut, abs=1e-5)


@pytest.fixture
async def service(bus, state, load_tiny, tmp_path) -> AsyncIterator[InferenceService]:  # type: ignore[no-untyped-def]
    """The real inference service (tiny generation model) on the test bus: it serves inference.embed too."""
    engine = await AsyncEngine.open(state_root=tmp_path, loaded=load_tiny())
    running = InferenceService(engine, url=bus.url, token=service_token(state, "main"))
    stop = asyncio.Event()
    task = asyncio.ensure_future(running.run(stop))
    await eventually(lambda: "inference:main" in bus.router.clients, what="service connected")
    yield running
    stop.set()
    await asyncio.wait_for(task, WAIT)
    await engine.close()


async def test_embed_over_the_bus_for_a_persona(service, connect, state) -> None:
    """A persona's own token may call inference.embed@cap:inference (its inference.* grant)."""
    persona = await connect(token=state.persona_token("ada", create=True), kind="persona", name="ada")
    result = await persona.call(
        "inference.embed", {"texts": SENTENCES[:2]}, to="cap:inference", deadline_ms=60_000
    )
    assert (EMBED_MODEL, EMBED_DIM, 2) == (result["model"], result["dim"], len(result["vectors"]))
    assert cosine(result["vectors"][0], result["vectors"][1]) > 0.6


@pytest.mark.parametrize(
    "params",
    [{"texts": []}, {"texts": ["x"] * (MAX_EMBED_BATCH + 1)}, {"texts": [""]}, {"texts": "one"}, {}],
)
async def test_bad_params_name_texts(service, connect, params) -> None:
    caller = await connect()
    with pytest.raises(RpcError) as info:
        await caller.call("inference.embed", params, to="cap:inference")
    assert ErrorCode.INVALID_PARAMS == info.value.code
    assert info.value.message.startswith("invalid params: texts")
    assert "texts" == info.value.data[0]["loc"][0]


async def test_an_observer_may_not_embed(service, connect, state) -> None:
    """An observer token holds no inference.* grant: the bus refuses it."""
    issued = state.issue_token(name="watcher", role="observer", subject="cli:watcher")
    watcher = await connect(token=issued.token, kind="cli", name="watcher")
    with pytest.raises(RpcError) as info:
        await watcher.call("inference.embed", {"texts": ["hello"]}, to="cap:inference")
    assert ErrorCode.FORBIDDEN == info.value.code


def test_float32_unless_the_environment_asks_for_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference's arithmetic by default; PERSONAD_EMBED_PRECISION=bfloat16 opts in; a typo is refused."""
    from daemon.errors import ConfigError
    from daemon.inference.embed import PRECISION_ENV

    monkeypatch.delenv(PRECISION_ENV, raising=False)
    default = Embedder()
    monkeypatch.setenv(PRECISION_ENV, "bfloat16")
    pinned = Embedder()
    try:
        assert (default.precision, pinned.precision) == ("float32", "bfloat16")
        (a,) = default.embed_sync([SENTENCES[0]])
        (b,) = pinned.embed_sync([SENTENCES[0]])
        assert 0.999 < cosine(a, b) < 1.0 - 1e-9  # close, and not the same arithmetic
    finally:
        default.close()
        pinned.close()
    monkeypatch.setenv(PRECISION_ENV, "fp16")
    with pytest.raises(ConfigError, match="choose auto, float32 or bfloat16"):
        Embedder()
