"""Who holds each client across the cluster, and what is in flight to a node that dies."""

from __future__ import annotations

from daemon.bus.federation_holders import Holders


def test_a_lost_run_returns_only_its_requests_and_forgets_its_clients() -> None:
    holders = Holders()
    holders.claimed("persona:a", "n1", "boot1")
    holders.claimed("persona:b", "n2", "boot2")
    holders.sent(1, "persona:a")
    holders.sent(2, "persona:b")
    holders.sent(3, "persona:nobody")  # never claimed: not tracked
    holders.sent(4, "persona:a")
    holders.done(4)  # answered meanwhile
    assert [1] == holders.lost("n1", "boot1")
    assert [] == holders.lost("n1", "boot1")
    assert 1 == len(holders)
    # persona:b moved to n1's next run: a request sent after that is on the new run.
    holders.claimed("persona:b", "n1", "boot3")
    holders.sent(5, "persona:b")
    assert [2] == holders.lost("n2", "boot2")
    assert [5] == holders.lost("n1", "boot3")


def test_the_oldest_claim_falls_out_past_the_limit() -> None:
    holders = Holders(limit=2)
    holders.claimed("persona:a", "n1", "x")
    holders.claimed("persona:b", "n1", "x")
    holders.claimed("persona:a", "n1", "x")  # claimed again: now the newest
    holders.claimed("persona:c", "n1", "x")
    assert 2 == len(holders)
    holders.sent(1, "persona:b")  # fell out: ends at its deadline instead
    holders.sent(2, "persona:a")
    assert [2] == holders.lost("n1", "x")
