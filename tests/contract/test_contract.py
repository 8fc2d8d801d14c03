"""The relay's verdict on request bodies against Datadog's own client models (differential).

hypothesis generates bodies, valid ones of every level and mutations of them; each is
posted over real HTTP to a relay and checked by the client models offline. Where they
disagree, every problem the relay lists must be one of the documented rules
(``tests.contract_rules``, docs/contract.md); any other disagreement fails, and no body
may get an answer other than 202 or a 400 in Datadog's error shape.

Set ``CONTRACT_EXAMPLES`` for a longer run than CI's; runs are derandomised, so a failure
replays with the same count.
"""

from __future__ import annotations

import http.client
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from hypothesis import HealthCheck, example, given, settings

from relay.config import OutboxSettings
from relay.contract.intake import PIPELINE_PATH
from tests.contract.contract_bodies import bodies, rule_examples
from tests.contract.contract_rules import MORE_PROBLEMS, RULES, explain
from tests.contract.datadog_models import client_accepts
from tests.helpers import serving_in_thread

EXAMPLES = int(os.environ.get("CONTRACT_EXAMPLES", "700"))
DOC = Path(__file__).parents[2] / "docs" / "contract.md"


class Relay:
    """A keep-alive HTTP connection to a relay, posting bodies to the ingest path."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self._connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)

    def post(self, body: bytes) -> tuple[int, bytes]:
        """The status and body of the relay's answer to ``body``."""
        headers = {"Content-Type": "application/json"}
        self._connection.request("POST", PIPELINE_PATH, body=body, headers=headers)
        answer = self._connection.getresponse()
        return answer.status, answer.read()

    def close(self) -> None:
        self._connection.close()


def encode(document: Any) -> bytes:
    """``document`` as the UTF-8 JSON a runner sends (integers of any size kept exactly)."""
    return json.dumps(document, ensure_ascii=False).encode()


def refusal_details(status: int, answer: bytes) -> list[str]:
    """The details of a 400 in Datadog's error shape (asserting the shape)."""
    errors = orjson.loads(answer)["errors"]
    assert [str(status)] == sorted({error["status"] for error in errors})
    return [error["detail"] for error in errors]


class Tally:
    """Counts of the run: bodies, agreements, and the bodies each rule explained."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.rules: Counter[str] = Counter()

    def summary(self) -> str:
        lines = [f"{name:<28} {count:>6}" for name, count in sorted(self.counts.items())]
        lines += [f"  rule {name:<22} {self.rules[name]:>6}" for name in (r.name for r in RULES)]
        return "contract: relay against datadog-api-client models\n" + "\n".join(lines)


def check(relay: Relay, document: Any, tally: Tally) -> None:
    """Post ``document``; fail unless the verdicts agree or the documented rules explain why not."""
    body = encode(document)
    status, answer = relay.post(body)
    assert status in (202, 400), f"{status} {answer[:500]!r} for {body[:2000]!r}"
    relay_accepts = status == 202
    client = client_accepts(json.loads(body))
    tally.counts["bodies"] += 1
    if relay_accepts == client:
        tally.counts["agree: both accept" if client else "agree: both refuse"] += 1
        return
    # The relay is never laxer than the client models: no documented rule goes that way.
    assert not relay_accepts, f"relay accepts a body the client models refuse: {body[:2000]!r}"
    details = [d for d in refusal_details(status, answer) if not d.startswith(MORE_PROBLEMS)]
    explained = {detail: explain(detail, document) for detail in details}
    unexplained = [detail for detail, rule in explained.items() if rule is None]
    assert [] == unexplained, f"undocumented stricter verdict for {body[:2000]!r}"
    tally.counts["differ: relay stricter"] += 1
    for name in {rule.name for rule in explained.values() if rule is not None}:
        tally.rules[name] += 1


def test_relay_verdicts_match_the_client_models_but_for_the_documented_rules(
    tmp_path: Path,
) -> None:
    """Every body gets 202 or 400, as Datadog's client models judge it, or a 400 that only
    the documented stricter rules explain; each rule is met at least once."""
    tally = Tally()
    settings_ = OutboxSettings(path=tmp_path / "outbox.db", synchronous="NORMAL")
    with serving_in_thread(settings_) as base_url:
        relay = Relay(base_url)

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(bodies())
        def run(document: Any) -> None:
            check(relay, document, tally)

        for document in rule_examples():
            run = example(document)(run)

        try:
            run()
        finally:
            relay.close()
            print(tally.summary())  # shown with -s, and by pytest when the test fails
    assert 0 < tally.counts["agree: both accept"]
    assert 0 < tally.counts["agree: both refuse"]
    assert [] == [rule.name for rule in RULES if tally.rules[rule.name] == 0]


def documented_rules() -> list[str]:
    """The rule names in docs/contract.md's table, in its order."""
    return re.findall(r"^\| `([a-z0-9_]+)` \|", DOC.read_text(encoding="utf-8"), re.MULTILINE)


def test_the_documented_rules_are_the_ones_the_contract_test_allows() -> None:
    """docs/contract.md's table lists exactly the rules tests/contract/contract_rules.py allows."""
    assert [rule.name for rule in RULES] == documented_rules()
