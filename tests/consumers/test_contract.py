"""The contract every consumer kind keeps, run for every kind that has a fixture adapter (``sandbox.adapters``).

Each case builds the kind's real consumer from a seeded inventory entry (``AnyConsumerConfig``, then
``build_consumer``), with the adapter's connections as ``AIRFLOW_CONN_*`` variables, and talks to the kind's
sandbox over real HTTP with the real client library. What a target holds is read through the service's own view
(``SeededConsumer.read``/``write_mark``), never through the consumer. Every case runs with logging at DEBUG, and
neither value nor any credential it used may appear in what it logged or printed.

A kind whose adapter has ``no_faults`` skips the fault and credential cases, saying why. A kind whose writes
cannot create a missing target says so in its adapter's ``missing_target``; its create case asserts the error.
The fixtures are in ``tests/consumers/conftest.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from kosli_rotation.consumers import KINDS
from kosli_rotation.consumers.transport import DEFAULT_POLICY
from kosli_rotation.errors import ConsumerError
from sandbox.adapters import ADAPTER_KINDS
from tests.consumers.conftest import Contract
from tests.support.client_logs import configure_airflow_at_debug, everything_logged, log_everything_at_debug

#: The retry policy's attempts: a persistent failure is tried this often.
ATTEMPTS = DEFAULT_POLICY.max_attempts
#: A refused credential is not retried: the call that was refused, and at most one more (a crumb, a probe).
REFUSED_REQUESTS = 2


@pytest.fixture(autouse=True)
def nothing_leaks(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> Iterator[None]:
    """Every case runs at DEBUG; afterwards none of its values and credentials is in what it logged or printed
    (raw or base64)."""
    from sandbox.secret_scan import find_secrets_in_text

    if "contract" not in request.fixturenames:  # the kind-independent check below
        yield
        return
    configure_airflow_at_debug(monkeypatch)
    log_everything_at_debug(caplog)
    contract: Contract = request.getfixturevalue("contract")
    yield
    output = everything_logged(caplog, capfd)
    assert not find_secrets_in_text(output, contract.secrets), f"{contract.kind}: a value or a credential leaked"


def skip_without_faults(contract: Contract) -> None:
    reason = contract.adapter.no_faults
    if reason:
        pytest.skip(f"{contract.kind}: {reason}")


def test_every_consumer_kind_has_a_fixture_adapter() -> None:
    assert set(ADAPTER_KINDS) == set(KINDS), "every kind needs an adapter, and every adapter a kind"


# -- writing ---------------------------------------------------------------------------------------------------


def test_a_write_creates_a_target_that_does_not_exist_yet(contract: Contract) -> None:
    seeded = contract.seed(None)
    consumer = contract.consumer(seeded)
    assert seeded.read() is None, "seeded empty"
    missing = contract.adapter.missing_target
    if missing:
        with pytest.raises(ConsumerError) as raised:
            consumer.write(contract.new)
        assert raised.value.retryable is False, f"{missing}: retrying cannot create it"
        assert seeded.fragment in str(raised.value), str(raised.value)
        return

    consumer.write(contract.new)

    assert seeded.read() == contract.new
    if consumer.readable:
        assert consumer.holds(contract.new)


def test_a_write_updates_a_target_holding_an_old_value(contract: Contract) -> None:
    seeded = contract.seed(contract.old)
    consumer = contract.consumer(seeded)
    if consumer.readable:
        assert consumer.holds(contract.old) and not consumer.holds(contract.new)
    before = seeded.write_mark()

    consumer.write(contract.new)

    assert seeded.read() == contract.new, "the service's own view holds the new value"
    assert seeded.write_mark() != before, "the store was written"
    if consumer.readable:
        assert consumer.holds(contract.new)


def test_a_rerun_writes_readable_targets_once_and_write_only_ones_again_harmlessly(contract: Contract) -> None:
    seeded = contract.seed(contract.old)
    contract.consumer(seeded).write(contract.new)
    mark = seeded.write_mark()

    rerun = contract.consumer(seeded)  # a new task instance: nothing shared but the service
    if rerun.readable:
        # consumer_engine.write: a readable consumer that holds the key is not written again.
        assert rerun.holds(contract.new), "a rerun sees the value is there"
        assert seeded.write_mark() == mark, "reading it wrote nothing"
    else:
        rerun.write(contract.new)  # write-only: the engine cannot tell, so it writes again
        assert seeded.write_mark() != mark
    assert seeded.read() == contract.new


# -- verifying -------------------------------------------------------------------------------------------------


def test_verify_is_ok_after_a_write(contract: Contract) -> None:
    seeded = contract.seed(contract.old)
    consumer = contract.consumer(seeded)
    written_at = time.time()
    consumer.write(contract.new)

    outcome = consumer.verify(contract.new, written_at=written_at)

    assert outcome.ok, outcome
    assert outcome.method, "the outcome says how it was established"


def test_verify_is_not_ok_when_a_readable_target_holds_another_value(contract: Contract) -> None:
    seeded = contract.seed(contract.old)
    consumer = contract.consumer(seeded)
    if not consumer.readable:
        pytest.skip(f"{contract.kind} is write-only: what it holds cannot be read, only the write confirmed")

    outcome = consumer.verify(contract.new, written_at=time.time())

    assert not outcome.ok, outcome
    assert contract.new not in outcome.detail and contract.old not in outcome.detail


# -- failing well ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["check_access", "write"])
def test_wrong_credentials_fail_at_once_naming_the_connection(contract: Contract, action: str) -> None:
    skip_without_faults(contract)
    seeded = contract.seed(contract.old)
    contract.connect(contract.adapter.wrong_credentials())
    consumer = contract.consumer(seeded)
    before = contract.requests_served()

    with pytest.raises(ConsumerError) as raised:
        consumer.check_access() if action == "check_access" else consumer.write(contract.new)

    message = str(raised.value)
    assert raised.value.retryable is False, message
    assert any(conn_id in message for conn_id in contract.adapter.connections), message
    assert contract.new not in message and contract.old not in message, "the error holds a value"
    assert contract.requests_served() - before <= REFUSED_REQUESTS, "a refused credential was retried"
    assert seeded.read() == contract.old


@pytest.mark.parametrize("present", [True, False], ids=["target present", "target missing"])
def test_the_access_check_passes_with_the_rotators_credentials(contract: Contract, present: bool) -> None:
    seeded = contract.seed(contract.old if present else None)
    if not present and contract.adapter.missing_target:
        pytest.skip(f"{contract.kind}: {contract.adapter.missing_target}")

    contract.consumer(seeded).check_access()

    assert seeded.read() == (contract.old if present else None), "checking access changed nothing"


@pytest.mark.parametrize(
    ("status", "times", "headers"),
    [(429, 2, {"Retry-After": "1"}), (502, 1, {})],
    ids=["rate limited, Retry-After", "one bad gateway"],
)
def test_transient_write_failures_are_retried_until_the_write_lands(
    contract: Contract, status: int, times: int, headers: dict[str, str]
) -> None:
    skip_without_faults(contract)
    seeded = contract.seed(contract.old)
    consumer = contract.consumer(seeded)
    fault = contract.fail_writes(status, times=times, headers=headers)

    consumer.write(contract.new)

    assert fault.fired == times
    assert seeded.read() == contract.new


def test_a_persistent_server_error_gives_up_retryable_after_the_policys_attempts(contract: Contract) -> None:
    skip_without_faults(contract)
    seeded = contract.seed(contract.old)
    consumer = contract.consumer(seeded)
    fault = contract.fail_writes(503, times=0, headers={"Retry-After": "0"})

    with pytest.raises(ConsumerError) as raised:
        consumer.write(contract.new)

    message = str(raised.value)
    assert raised.value.retryable is True, message
    assert fault.fired == ATTEMPTS, f"{fault.fired} writes answered 503, the policy allows {ATTEMPTS}"
    assert seeded.fragment in message, f"the error names the target: {message}"
    assert contract.new not in message and contract.old not in message, "the error holds a value"
    assert seeded.read() == contract.old
