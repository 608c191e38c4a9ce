"""adapter.train over the bus: a real service, a real worker process, real models.

Most tests run the tiny random Llama (conftest.py) through the ``inference``
fixture; the acceptance test trains SmolLM2 and checks the stored stack in
plain transformers + PEFT against the engine, token for token.

Worker processes are found in /proc (children of this process running the
worker module), so "none left" is checked on the system, not on the
service's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import os
import signal
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from daemon.bus import Bus
from daemon.client import BusClient
from daemon.inference.adapters import WEIGHTS_FILE, AdapterRecord, AdapterStore
from daemon.inference.engine import AsyncEngine
from daemon.inference.model import load_model
from daemon.inference.service import InferenceService
from daemon.inference.train_service import WORKER_MODULE
from daemon.state import StateDir
from protocol import ErrorCode, Notification, RpcError
from protocol.commands.inference import GenerateParams
from tests.conftest import WAIT, eventually, start_bus_process
from tests.daemon.inference.conftest import PROMPTS, serving_inference

#: Steps enough that a test acts (generates, cancels, kills) while the worker is still training.
LONG = {"epochs": 20, "n": 200}


def examples(reply: str, n: int = len(PROMPTS)) -> list[dict[str, Any]]:
    """``n`` chat examples, each a prompt answered with ``reply`` (every other one with a system line)."""
    out = []
    for i in range(n):
        messages = [
            {"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} ({i})"},
            {"role": "assistant", "content": reply},
        ]
        if i % 2:
            messages.insert(0, {"role": "system", "content": "You are Ada."})
        out.append({"messages": messages})
    return out


def workers(parent: int | None = None) -> set[int]:
    """Pids of ``parent``'s children (default: this process's) running the training worker."""
    me, found = parent or os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and WORKER_MODULE.encode() in cmdline:
            found.add(int(entry.name))
    return found


def gone(pid: int) -> bool:
    """Exited and reaped: no process, not even a zombie, holds the pid."""
    return not Path(f"/proc/{pid}").exists()


def dead(pid: int) -> bool:
    """Gone, or a zombie waiting for a reaper (an orphan's, once its parent died, is not ours)."""
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def leftovers(store: AdapterStore) -> list[str]:
    """Training scratch folders left in the store."""
    return sorted(p.name for p in store.root.iterdir() if p.name.startswith(".train-"))


class Training:
    """One adapter.train call running in the background, with its progress notifications."""

    def __init__(self, client: BusClient, params: dict[str, Any]) -> None:
        self.progress: list[dict[str, Any]] = []
        self.started = asyncio.Event()
        self.task = asyncio.ensure_future(
            client.call(
                "adapter.train", params, to="cap:inference", deadline_ms=600_000, on_progress=self._note
            )
        )

    def _note(self, note: Notification) -> None:
        assert note.method == "adapter.train.progress"
        assert isinstance(note.params, dict)
        self.progress.append(note.params)
        self.started.set()

    async def training(self) -> int:
        """Wait for the first progress; returns the worker's pid."""
        await asyncio.wait_for(self.started.wait(), WAIT * 4)
        (pid,) = workers()
        return pid


def long_params(name: str) -> dict[str, Any]:
    return {"name": name, "examples": examples("zebra", LONG["n"]), "epochs": LONG["epochs"]}


async def test_train_streams_progress_and_stores_a_level_over_its_frozen_parent(
    inference: InferenceService, connect: Callable[..., Any], store: AdapterStore, make_adapter: Any
) -> None:
    parent = make_adapter("zoo", seed=1)
    parent_bytes = (parent.path / WEIGHTS_FILE).read_bytes()
    admin = await connect(name="admin")
    data = examples("stripes stripes stripes")
    job = Training(
        admin,
        {"name": "zoo.cat", "examples": data, "epochs": 2, "seed": 3, "meta": {"run": "academy-7"}},
    )
    answer = await asyncio.wait_for(job.task, WAIT * 8)

    record = store.get("zoo.cat")
    assert answer["name"] == "zoo.cat"
    assert answer["sha256"] == record.sha256
    assert answer["parent"] == "zoo"
    assert (answer["examples"], answer["steps"]) == (len(data), 2 * len(data))
    assert answer["examples_per_s"] > 0
    assert answer["seconds"] > 0
    # Its record names the parent it was trained over, which stayed frozen.
    assert record.parent_sha256 == parent.sha256
    assert record.meta["parents"] == {"zoo": parent.sha256}
    assert record.meta["run"] == "academy-7"
    assert record.meta["examples"] == len(data)
    assert parent_bytes == (parent.path / WEIGHTS_FILE).read_bytes()
    assert not store.is_stale(record)
    # Progress: from the first step to the last, in order, each a valid TrainProgressParams.
    steps = [p["step"] for p in job.progress]
    assert steps[0] == 1
    assert steps[-1] == answer["steps"]
    assert steps == sorted(steps)
    assert {p["total"] for p in job.progress} == {answer["steps"]}
    assert job.progress[-1]["epoch"] == 2
    assert job.progress[-1]["loss"] == pytest.approx(answer["final_loss"])
    assert not workers()
    assert not leftovers(store)
    # The running engine serves the new stack at once.
    reply = await admin.call(
        "inference.generate",
        {
            "messages": [{"role": "user", "content": "hello"}],
            "stack": [r.entry.model_dump() for r in store.resolve("zoo.cat")],
            "max_tokens": 3,
        },
        to="cap:inference",
        deadline_ms=60_000,
    )
    assert [e["name"] for e in reply["stack"]] == ["zoo", "zoo.cat"]
    assert reply["stack"][1]["sha256"] == record.sha256


async def test_cancel_mid_training_stores_nothing_and_leaves_no_worker(
    inference: InferenceService, bus: Bus, connect: Callable[..., Any], store: AdapterStore, make_adapter: Any
) -> None:
    make_adapter("zoo", seed=1)
    before = store.index_path.read_bytes()
    admin = await connect(name="admin")
    job = Training(admin, long_params("zoo.cat"))
    pid = await job.training()
    # Generation goes on meanwhile: training is not on the engine's thread.
    reply = await admin.call(
        "inference.generate",
        {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
        to="cap:inference",
        deadline_ms=60_000,
    )
    assert reply["completion_tokens"] >= 1
    assert not job.task.done()
    cancelled_before = bus.metrics.errors["CANCELLED"]
    job.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job.task
    await eventually(lambda: gone(pid), what="the worker killed and reaped")
    # The bus answered the request CANCELLED (the caller's own task had stopped waiting).
    assert bus.metrics.errors["CANCELLED"] == cancelled_before + 1
    assert job.progress[-1]["step"] < job.progress[-1]["total"]
    assert before == store.index_path.read_bytes()
    assert ["zoo"] == store.names()
    await eventually(lambda: not leftovers(store), what="scratch folder removed")
    assert not workers()


async def test_a_second_training_is_overloaded_until_the_first_ends(
    inference: InferenceService, connect: Callable[..., Any], store: AdapterStore
) -> None:
    admin = await connect(name="admin")
    other = await connect(name="other")
    job = Training(admin, long_params("first"))
    pid = await job.training()
    with pytest.raises(RpcError) as busy:
        await other.call(
            "adapter.train", {"name": "second", "examples": examples("hi", 2)}, to="cap:inference"
        )
    assert ErrorCode.OVERLOADED == busy.value.code
    assert "one at a time" in busy.value.message
    job.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job.task
    await eventually(lambda: gone(pid), what="the first worker gone")

    # The slot is free again once the service has reaped the worker (a moment after it is gone).
    async def second() -> Any:
        try:
            return await other.call(
                "adapter.train",
                {"name": "second", "examples": examples("hi", 2), "epochs": 1},
                to="cap:inference",
                deadline_ms=120_000,
            )
        except RpcError as exc:
            if exc.code == ErrorCode.OVERLOADED:
                return None
            raise

    answer = await eventually(second, what="a second training taken")
    assert answer["sha256"] == store.get("second").sha256
    assert ["second"] == store.names()


async def test_a_worker_that_dies_answers_internal_error_with_the_reason(
    inference: InferenceService, connect: Callable[..., Any], store: AdapterStore
) -> None:
    admin = await connect(name="admin")
    job = Training(admin, long_params("doomed"))
    pid = await job.training()
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    with pytest.raises(RpcError) as died:
        await asyncio.wait_for(job.task, WAIT)
    assert ErrorCode.INTERNAL_ERROR == died.value.code
    assert "the training worker was killed by SIGKILL before storing the adapter" in died.value.message
    assert [] == store.names()
    assert gone(pid)
    assert not leftovers(store)
    # And the service still serves, trainings included.
    answer = await admin.call(
        "adapter.train",
        {"name": "after", "examples": examples("hi", 2), "epochs": 1},
        to="cap:inference",
        deadline_ms=120_000,
    )
    assert answer["name"] == "after"


async def test_the_worker_dies_with_the_service(state: StateDir, spawn: Any, tiny_dir: Path) -> None:
    """A real `personad inference` killed outright (SIGKILL, no clean-up) takes its worker with it."""
    _, url = start_bus_process(spawn)
    service = spawn("inference", "--model", str(tiny_dir), "--threads", "1", env={"PERSONAD_URL": url})
    service.wait_for_line(r"connected url=\S+ client_id=inference:main\b", timeout=WAIT * 4)
    admin = BusClient(url, token=state.admin_token, kind="cli", name="admin")  # type: ignore[attr-defined]
    await admin.start()
    try:
        job = Training(admin, long_params("orphan"))
        await asyncio.wait_for(job.started.wait(), WAIT * 4)
        (pid,) = workers(service.popen.pid)
        service.stop(signal.SIGKILL)
        await eventually(lambda: dead(pid), what="the orphaned worker dead")
        with pytest.raises(RpcError) as lost:
            await asyncio.wait_for(job.task, WAIT)
        assert ErrorCode.TARGET_OFFLINE == lost.value.code
    finally:
        await admin.close()
    assert [] == AdapterStore.for_state(state.root).names()


@pytest.mark.parametrize(
    ("params", "field", "data"),
    [
        # The service's own checks: data.field names the field.
        ({"name": "zoo.cat", "examples": examples("x", 2)}, "name", {"field": "name"}),
        (
            {
                "name": "solo",
                "examples": [
                    *examples("x", 1),
                    {"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]},
                ],
            },
            "examples.1.messages",
            {"field": "examples.1.messages"},
        ),
        # The wire model's (the dispatcher): data lists pydantic's errors.
        ({"name": "Not A Name", "examples": examples("x", 1)}, "name", None),
        ({"name": "solo", "examples": []}, "examples", None),
        ({"name": "solo", "examples": examples("x", 1), "epochs": 0}, "epochs", None),
        (
            {"name": "solo", "examples": [{"messages": [{"role": "tool", "content": "x"}] * 2}]},
            "examples.0.messages.0.role",
            None,
        ),
        ({"name": "solo", "examples": examples("x", 1), "extra": 1}, "extra", None),
    ],
)
async def test_bad_params_are_invalid_params_naming_the_field(
    inference: InferenceService,
    connect: Callable[..., Any],
    store: AdapterStore,
    params: dict[str, Any],
    field: str,
    data: dict[str, str] | None,
) -> None:
    admin = await connect(name="admin")
    with pytest.raises(RpcError) as bad:
        await admin.call("adapter.train", params, to="cap:inference")
    assert ErrorCode.INVALID_PARAMS == bad.value.code
    assert bad.value.message.startswith(f"invalid params: {field}:"), bad.value.message
    if data is not None:
        assert data == bad.value.data
    assert [] == store.names()
    assert not workers()


async def test_personas_are_refused_by_the_bus_and_by_the_service(
    inference: InferenceService, bus: Bus, state: StateDir, store: AdapterStore
) -> None:
    params = {"name": "mine", "examples": examples("x", 2)}
    plain = state.persona_token("ada", create=True)
    granted = state.persona_token("bob", create=True, grants=("adapter.train@cap:inference",))
    for name, token, message in (
        ("ada", plain, "token 'persona:ada' may not call adapter.train on cap:inference"),
        ("bob", granted, "persona:bob may not call adapter.train: it writes the shared adapter store"),
    ):
        persona = BusClient(bus.url, token=token, kind="persona", name=name)
        await persona.start()
        try:
            with pytest.raises(RpcError) as refused:
                await persona.call("adapter.train", params, to="cap:inference")
            assert ErrorCode.FORBIDDEN == refused.value.code, name
            assert refused.value.message.startswith(message), refused.value.message
        finally:
            await persona.close()
    assert [] == store.names()
    assert not workers()


# -- acceptance: the trained adapter in plain PEFT ------------------------------------------------

PIRATE = "Arr matey! Me compass points only to buried treasure."


@pytest.fixture
async def smollm2_inference(
    bus: Bus, state: StateDir, store: AdapterStore, smollm2_dir: Path, tmp_path: Path
) -> AsyncIterator[InferenceService]:
    """cap:inference with SmolLM2 on the test's bus and store."""
    engine = await AsyncEngine.open(
        state_root=store.root.parent, store=store, loaded=load_model(smollm2_dir, state_root=tmp_path)
    )
    try:
        async with serving_inference(bus, state, engine) as running:
            yield running
    finally:
        await engine.close()


def peft_greedy(
    model_dir: Path, levels: list[AdapterRecord], messages: list[dict[str, str]], n: int
) -> list[int]:
    """Greedy completion ids from plain transformers + PEFT, every level loaded and active (summed)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    keys = [f"level{i}" for i in range(len(levels))]
    with warnings.catch_warnings():  # transformers deprecations PEFT triggers: not ours
        warnings.simplefilter("ignore")
        model: Any = PeftModel.from_pretrained(base, str(levels[0].path), adapter_name=keys[0])
        for key, level in zip(keys[1:], levels[1:], strict=True):
            model.load_adapter(str(level.path), adapter_name=key)
        model.base_model.set_adapter(keys)
    model.eval()
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(input_ids=ids, do_sample=False, max_new_tokens=n)
    completion: list[int] = out[0, ids.shape[1] :].tolist()
    return completion


async def test_acceptance_the_trained_adapter_loads_in_plain_peft_and_reproduces_the_persona(
    smollm2_inference: InferenceService, connect: Callable[..., Any], store: AdapterStore, smollm2_dir: Path
) -> None:
    """Train ada, then ada.pirate over it, on the bus; plain PEFT with that stack replies as the engine."""
    admin = await connect(name="academy")

    async def train(params: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await admin.call(
            "adapter.train", params, to="cap:inference", deadline_ms=600_000
        )
        return result

    await train({"name": "ada", "examples": examples("I am Ada, glad to help.", 3), "epochs": 1})
    child = await train(
        {"name": "ada.pirate", "examples": examples(PIRATE), "epochs": 3, "learning_rate": 5e-3}
    )
    assert child["parent"] == "ada"
    stack = store.resolve("ada.pirate")
    messages = [{"role": "user", "content": "What is your favourite colour?"}]
    n = 24

    peft_ids = await asyncio.to_thread(peft_greedy, smollm2_dir, stack, messages, n)
    backend: Any = smollm2_inference.backend
    tokenizer = backend.engine.tokenizer

    def engine_greedy(levels: list[AdapterRecord]) -> Callable[[Any], list[int]]:
        """Greedy ids from the engine's own stack application, one full forward pass per token."""

        def run(engine: Any) -> list[int]:
            prompt = engine.encode(GenerateParams(messages=messages))
            out: list[int] = []
            for _ in range(n):
                out.append(int(engine.logits(torch.tensor([prompt + out]), levels)[0, -1].argmax()))
            return out

        return run

    def reply(ids: list[int]) -> list[int]:
        """Up to the end of the turn (plain generate stops there; the loop above does not)."""
        return ids[: next((i for i, t in enumerate(ids) if t == tokenizer.eos_token_id), len(ids))]

    peft_ids = reply(peft_ids)
    ours_ids = reply(await backend.run(engine_greedy(stack)))
    base_ids = reply(await backend.run(engine_greedy([])))
    # Plain PEFT and the engine apply the stored stack alike: the same tokens.
    assert peft_ids == ours_ids
    peft_text = tokenizer.decode(peft_ids, skip_special_tokens=True)
    assert PIRATE in peft_text
    assert peft_ids != base_ids
    assert PIRATE not in tokenizer.decode(base_ids, skip_special_tokens=True)

    answer = await admin.call(
        "inference.generate",
        {
            "messages": messages,
            "stack": [r.entry.model_dump() for r in stack],
            "temperature": 0.0,
            "max_tokens": n,
        },
        to="cap:inference",
        deadline_ms=120_000,
    )
    assert [e["sha256"] for e in answer["stack"]] == [r.sha256 for r in stack]
    # And inference.generate at temperature 0 answers those same tokens.
    assert (answer["text"], answer["completion_tokens"]) == (peft_text, len(peft_ids))
