"""Tokens: provide grants, grants that reach a person's own browser, and the
token file changed by many processes at once (every change lands).

The concurrency tests run the real ``personad token`` CLI (``python -m
daemon``) as separate processes, all started before any is waited for, the
way the attack ran them; nothing is simulated.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from daemon.errors import ConfigError
from daemon.state import StateDir
from daemon.tokens import ROLE_GRANTS, TokenStore, grants_for
from tests.conftest import REPO, WAIT

ADDS = 12
REVOKES = 6
#: Only a guard against a hung process, never a measure: a score of Python
#: start-ups on a shared, loaded machine can take minutes.
HANG_GUARD = WAIT * 20


def start_cli(state: StateDir, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PERSONAD_STATE_DIR": str(state.root)}
    env.pop("PERSONAD_TOKEN", None)
    return subprocess.Popen(
        [sys.executable, "-m", "daemon", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=HANG_GUARD)
    return proc.returncode, out, err


# -- grants -------------------------------------------------------------------------


def test_provide_grants_decide_which_capabilities_a_token_may_serve(state) -> None:
    """provide:<cap> (or *) lets a token serve a capability; METHOD@TARGET grants never do."""
    issued = state.issue_token(name="infer", role="service", subject="inference:*", provides=("inference",))
    assert "provide:inference" in issued.entry.grants
    assert issued.entry.may_provide("inference")
    assert not issued.entry.may_provide("browser")
    persona = state.tokens().verify(state.persona_token("ada", create=True))
    assert persona is not None
    # The persona role serves chat and nothing else, whatever its call grants say.
    assert (True, False, False) == (
        persona.may_provide("chat"),
        persona.may_provide("inference"),  # it may *call* inference.*@cap:inference, not serve it
        persona.may_provide("browser"),
    )
    admin = state.tokens().verify(state.admin_token)
    assert admin is not None
    assert admin.may_provide("inference")  # "*": a person developing a provider
    observer = state.issue_token(name="spy", role="observer", subject="cli:*").entry
    assert not any(observer.may_provide(cap) for cap in ("inference", "browser", "chat"))
    with pytest.raises(ConfigError, match="invalid capability"):
        grants_for("service", provides=("Not A Cap",))


def test_no_role_reaches_a_browser_by_default_and_only_named_grants_reach_an_extension(state) -> None:
    """The persona role has no browser grant; an extension is reached only by grants naming extension:."""
    assert not any("browser" in grant for grant in ROLE_GRANTS["persona"])
    persona = state.tokens().verify(state.persona_token("ada", create=True))
    assert persona is not None
    assert not persona.allows("screenshot", "cap:browser")
    wide = state.issue_token(
        name="wide", role="observer", subject="cli:*", grants=("browser_js", "screenshot@*")
    ).entry
    assert wide.allows("browser_js", "cap:browser")
    assert wide.allows("screenshot", "browser:headless")
    assert not wide.allows("browser_js", "extension:user")  # no target: not the person's browser
    assert not wide.allows("screenshot", "extension:user")  # "*" as a target: not either
    named = state.issue_token(
        name="named", role="observer", subject="cli:*", grants=("screenshot@extension:user",)
    ).entry
    assert named.allows("screenshot", "extension:user")
    assert not named.allows("browser_js", "extension:user")
    assert not named.allows("screenshot", "extension:other")
    admin = state.tokens().verify(state.admin_token)
    assert admin is not None
    assert admin.allows("browser_js", "extension:user")  # the person themself


def test_a_persona_token_is_reissued_when_its_grants_change_and_kept_otherwise(state) -> None:
    """Same grants: the same token. Other grants: a new token, the old one revoked in the same step.

    A caller that does not know the config's grants (grants=None) keeps the
    stored token: `personad persona` must not narrow what `personad up` issued.
    """
    first = state.persona_token("ada", create=True, grants=("screenshot@cap:browser",))
    assert first == state.persona_token("ada", create=True, grants=("screenshot@cap:browser",))
    assert first == state.persona_token("ada", create=True)
    second = state.persona_token("ada", create=True, grants=())
    assert second != first
    assert state.tokens().verify(first) is None
    entry = state.tokens().verify(second)
    assert entry is not None
    assert set(entry.grants) == set(ROLE_GRANTS["persona"])
    assert ["persona:ada"] == [e.name for e in state.tokens().entries() if e.name.startswith("persona:")]


def test_the_token_file_lock_is_reentrant_and_needs_the_state_dir(state, tmp_path) -> None:
    """A rotation holds the lock around add and revoke without waiting on itself; no state dir: an error."""
    store = state.tokens()
    with store.locked(), store.locked():
        token, _ = store.add(name="inner", role="observer", subject="cli:*")
        assert 1 == store.revoke("inner")
    assert store.verify(token) is None
    with pytest.raises(ConfigError, match="does not exist"):
        TokenStore(tmp_path / "missing" / "tokens.json").revoke("x")


# -- concurrent changes, real processes ------------------------------------------------


def test_concurrent_token_adds_and_revokes_all_land(state) -> None:
    """12 `token add` and 6 `token revoke` at once: every printed token verifies, every revocation sticks."""
    doomed = [state.issue_token(name=f"doomed-{i}", role="observer", subject="cli:*") for i in range(REVOKES)]
    procs = [start_cli(state, "token", "add", "--name", f"new-{i}") for i in range(ADDS)]  # role observer
    procs += [start_cli(state, "token", "revoke", f"doomed-{i}") for i in range(REVOKES)]
    results = [finish(proc) for proc in procs]
    assert [0] * (ADDS + REVOKES) == [code for code, _, _ in results], [err for _, _, err in results]
    printed = []
    for _, out, _ in results[:ADDS]:
        match = re.search(r"^PERSONAD_TOKEN=(pd_\S+)$", out, re.MULTILINE)
        assert match is not None, out
        printed.append(match.group(1))
    assert ["revoked 1 token(s)"] * REVOKES == [out.strip() for _, out, _ in results[ADDS:]]
    store = TokenStore(state.tokens_path)  # a fresh reader, as the bus would be
    assert [] == [i for i, token in enumerate(printed) if store.verify(token) is None]
    assert [] == [i for i, doomed_one in enumerate(doomed) if store.verify(doomed_one.token) is not None]
    names = sorted(e.name for e in store.entries())
    assert sorted(["admin", *(f"new-{i}" for i in range(ADDS))]) == names


def test_concurrent_persona_starts_agree_on_one_valid_token(state, tmp_path) -> None:
    """8 processes rotating the same persona token at once all end with the same token, and it verifies.

    Each process imports personad first and then waits for a go file, so that
    the rotations really overlap (imports take longer than a rotation).
    """
    script = """
import sys, time
from pathlib import Path
from daemon.state import StateDir
state, go = StateDir(Path(sys.argv[1])), Path(sys.argv[2])
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.001)
print(state.persona_token("ada", create=True, grants=("browser_js@cap:browser",)), flush=True)
"""
    go = tmp_path / "go"
    state.persona_token("ada", create=True, grants=())  # a token without the grant: each must rotate it
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(state.root), str(go), str(HANG_GUARD)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert "ready\n" == proc.stdout.readline()
    go.touch()
    outputs = [proc.communicate(timeout=HANG_GUARD)[0].strip() for proc in procs]
    assert [0] * 8 == [proc.returncode for proc in procs]
    assert 1 == len(set(outputs)), outputs
    entry = TokenStore(state.tokens_path).verify(outputs[0])
    assert entry is not None
    assert "browser_js@cap:browser" in entry.grants
    assert outputs[0] == state.read_secret("persona-ada.token")
    assert ["persona:ada"] == [e.name for e in state.tokens().entries() if e.name.startswith("persona:")]


def test_persona_tokens_generate_but_never_write_the_adapter_store(state) -> None:
    """The persona role calls inference.* on cap:inference, and not adapter.merge (an admin write)."""
    persona = state.tokens().verify(state.persona_token("ada", create=True))
    assert persona is not None
    allowed = {
        (method, target): persona.allows(method, target)
        for method in ("inference.generate", "inference.load_stack", "adapter.merge")
        for target in ("cap:inference", "inference:main")
    }
    assert {
        ("inference.generate", "cap:inference"): True,
        ("inference.generate", "inference:main"): True,
        ("inference.load_stack", "cap:inference"): True,
        ("inference.load_stack", "inference:main"): True,
        ("adapter.merge", "cap:inference"): False,
        ("adapter.merge", "inference:main"): False,
    } == allowed
