"""KeyPool: round-robin over usable keys, cooldown on 429, disabled on 401/403 (DESIGN §4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from domain.errors import NoUsableKey
from domain.key_pool import ApiKey, KeyPool

DEFAULT_COOLDOWN = 30.0

# "sk-" never occurs in a repr or a fingerprint, so a leak of the value cannot hide behind a
# coincidental substring match.
key_values = st.text(
    alphabet=st.characters(codec="ascii", categories=("L", "N", "P")), min_size=8, max_size=40
).map(lambda s: f"sk-{s}")


def make_keys(n: int) -> list[ApiKey]:
    return [ApiKey(f"sk-test-{i:04d}") for i in range(n)]


def make_pool(n: int, default_cooldown: float = DEFAULT_COOLDOWN) -> KeyPool:
    return KeyPool("openai", make_keys(n), default_cooldown=default_cooldown)


# --- ApiKey ---------------------------------------------------------------------------------


@given(value=key_values)
def test_api_key_repr_and_str_show_only_the_fingerprint(value: str) -> None:
    key = ApiKey(value)

    assert key.fingerprint.startswith("key-")
    assert str(key) == key.fingerprint
    assert f"{key}" == key.fingerprint
    for rendered in (repr(key), str(key), repr([key]), repr(KeyPool("p", [key], 1.0).keys)):
        assert value not in rendered
    assert key.fingerprint in repr(key)


@given(value=key_values)
def test_fingerprint_is_stable_per_value(value: str) -> None:
    assert ApiKey(value).fingerprint == ApiKey(value).fingerprint
    assert ApiKey(value).fingerprint != ApiKey(value + "x").fingerprint


@pytest.mark.parametrize("value", ["", " sk-abc", "sk-abc ", "\tsk-abc\n"])
def test_api_key_rejects_empty_or_padded_values(value: str) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        ApiKey(value)


def test_the_same_key_twice_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="twice"):
        KeyPool("openai", [ApiKey("sk-same"), ApiKey("sk-same")], default_cooldown=1.0)


# --- round-robin ----------------------------------------------------------------------------


@settings(max_examples=200)
@given(data=st.data(), n=st.integers(min_value=1, max_value=8))
def test_round_robin_hands_out_each_usable_key_once_per_round(data: st.DataObject, n: int) -> None:
    pool = make_pool(n)
    keys = pool.keys
    now = 1000.0
    disabled = data.draw(st.sets(st.sampled_from(keys)), label="disabled")
    cooling = data.draw(st.sets(st.sampled_from(keys)), label="cooling")
    for key in disabled:
        pool.disable(key)
    for key in cooling:
        pool.cool_down(key, now, retry_after=60.0)
    usable = [k for k in keys if k not in disabled and k not in cooling]
    if not usable:
        with pytest.raises(NoUsableKey):
            pool.acquire(now)
        return

    for _ in range(data.draw(st.integers(min_value=0, max_value=3 * n), label="warm-up")):
        pool.acquire(now)
    handed_out = [
        pool.acquire(now) for _ in range(data.draw(st.integers(1, 4), label="rounds") * len(usable))
    ]

    for start in range(len(handed_out) - len(usable) + 1):
        window = handed_out[start : start + len(usable)]
        assert sorted(k.fingerprint for k in window) == sorted(k.fingerprint for k in usable)
    assert not set(handed_out) & (disabled | cooling)


def test_round_robin_follows_configuration_order() -> None:
    pool = make_pool(3)
    a, b, c = pool.keys

    assert [pool.acquire(0.0) for _ in range(4)] == [a, b, c, a]


def test_round_robin_skips_an_unusable_key_and_keeps_its_place() -> None:
    pool = make_pool(3)
    a, b, c = pool.keys
    assert pool.acquire(0.0) is a
    pool.cool_down(b, 0.0, retry_after=5.0)

    assert [pool.acquire(1.0) for _ in range(3)] == [c, a, c]
    assert [pool.acquire(5.0) for _ in range(3)] == [a, b, c]


# --- cooldown and disable -------------------------------------------------------------------


def test_cooldown_uses_retry_after_then_the_key_comes_back_exactly_at_reset() -> None:
    pool = make_pool(1)
    (key,) = pool.keys

    assert pool.cool_down(key, now=100.0, retry_after=2.5) == 102.5
    assert not pool.is_usable(key, 102.4)
    with pytest.raises(NoUsableKey):
        pool.acquire(102.4)
    assert pool.acquire(102.5) is key


def test_cooldown_without_retry_after_uses_the_default() -> None:
    pool = make_pool(1, default_cooldown=7.0)
    (key,) = pool.keys

    assert pool.cool_down(key, now=10.0, retry_after=None) == 17.0
    assert pool.cooling_down(16.9) == 1
    assert pool.cooling_down(17.0) == 0


def test_a_shorter_retry_after_does_not_shorten_an_existing_cooldown() -> None:
    pool = make_pool(1)
    (key,) = pool.keys
    pool.cool_down(key, now=0.0, retry_after=60.0)

    assert pool.cool_down(key, now=1.0, retry_after=1.0) == 60.0


def test_a_negative_retry_after_counts_as_zero() -> None:
    pool = make_pool(1)
    (key,) = pool.keys

    assert pool.cool_down(key, now=5.0, retry_after=-3.0) == 5.0
    assert pool.acquire(5.0) is key


def test_a_disabled_key_never_comes_back() -> None:
    pool = make_pool(2)
    a, b = pool.keys
    pool.disable(a)

    assert [pool.acquire(t) for t in (0.0, 1e6, 1e9)] == [b, b, b]
    assert pool.disabled() == 1


# --- NoUsableKey ----------------------------------------------------------------------------


def test_no_usable_key_says_when_the_earliest_key_frees_up() -> None:
    pool = make_pool(3)
    a, b, c = pool.keys
    pool.cool_down(a, 10.0, retry_after=30.0)
    pool.cool_down(b, 10.0, retry_after=4.0)
    pool.disable(c)

    with pytest.raises(NoUsableKey) as caught:
        pool.acquire(12.0)

    assert caught.value.provider == "openai"
    assert caught.value.retry_after == pytest.approx(2.0)
    assert "retry after 2.0s" in str(caught.value)


def test_no_usable_key_ignores_the_cooldown_of_a_disabled_key() -> None:
    pool = make_pool(2)
    a, b = pool.keys
    pool.cool_down(a, 0.0, retry_after=1.0)
    pool.cool_down(b, 0.0, retry_after=9.0)
    pool.disable(a)

    with pytest.raises(NoUsableKey) as caught:
        pool.acquire(0.0)

    assert caught.value.retry_after == pytest.approx(9.0)


def test_no_usable_key_has_no_reset_when_every_key_is_disabled() -> None:
    pool = make_pool(2)
    for key in pool.keys:
        pool.cool_down(key, 0.0, retry_after=5.0)
        pool.disable(key)

    with pytest.raises(NoUsableKey) as caught:
        pool.acquire(1.0)

    assert caught.value.retry_after is None
    assert "disabled" in str(caught.value)


def test_an_empty_pool_has_no_usable_key() -> None:
    with pytest.raises(NoUsableKey) as caught:
        KeyPool("gemini", [], default_cooldown=1.0).acquire(0.0)

    assert caught.value.retry_after is None


@given(value=key_values)
def test_no_usable_key_message_never_contains_the_key(value: str) -> None:
    key = ApiKey(value)
    pool = KeyPool("openai", [key], default_cooldown=1.0)
    pool.cool_down(key, 0.0, retry_after=None)

    with pytest.raises(NoUsableKey) as caught:
        pool.acquire(0.0)

    assert value not in str(caught.value)
    assert value not in repr(caught.value)


# --- reference model ------------------------------------------------------------------------


class KeyPoolMachine(RuleBasedStateMachine):
    """Arbitrary acquire / cool_down / disable / time advances against a reference model.

    The model: a key is usable when it is not disabled and its reset (the latest one it was
    given) is at or before `now`; acquire hands out the first usable key after the last one
    handed out, in configuration order.
    """

    pool: KeyPool
    default_cooldown: float

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.reset_at: dict[int, float] = {}
        self.disabled: set[int] = set()
        self.last = -1

    @initialize(n=st.integers(min_value=1, max_value=5), default=st.sampled_from([0.0, 1.0, 30.0]))
    def configure(self, n: int, default: float) -> None:
        self.pool = make_pool(n, default_cooldown=default)
        self.default_cooldown = default

    # -- model

    @property
    def n(self) -> int:
        return len(self.pool)

    def model_usable(self, i: int) -> bool:
        return i not in self.disabled and self.reset_at.get(i, self.now) <= self.now

    def model_earliest_reset(self) -> float | None:
        resets = [
            until - self.now
            for i, until in self.reset_at.items()
            if i not in self.disabled and until > self.now
        ]
        return min(resets) if resets else None

    # -- rules

    @rule()
    def acquire(self) -> None:
        candidates = [(self.last + step) % self.n for step in range(1, self.n + 1)]
        expected = next((i for i in candidates if self.model_usable(i)), None)
        if expected is None:
            with pytest.raises(NoUsableKey) as caught:
                self.pool.acquire(self.now)
            reset = self.model_earliest_reset()
            if reset is None:
                assert caught.value.retry_after is None
            else:
                assert caught.value.retry_after == pytest.approx(reset)
                assert caught.value.retry_after > 0
            return
        key = self.pool.acquire(self.now)
        assert key is self.pool.keys[expected]
        self.last = expected

    @rule(
        data=st.data(),
        retry_after=st.one_of(st.none(), st.floats(min_value=-5.0, max_value=120.0)),
    )
    def cool_down(self, data: st.DataObject, retry_after: float | None) -> None:
        i = data.draw(st.integers(min_value=0, max_value=self.n - 1), label="key")
        seconds = self.default_cooldown if retry_after is None else max(0.0, retry_after)
        until = max(self.reset_at.get(i, self.now), self.now + seconds)
        self.reset_at[i] = until

        assert self.pool.cool_down(self.pool.keys[i], self.now, retry_after) == until

    @rule(data=st.data())
    def disable(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(min_value=0, max_value=self.n - 1), label="key")
        self.disabled.add(i)
        self.pool.disable(self.pool.keys[i])

    @rule(dt=st.floats(min_value=0.0, max_value=90.0))
    def advance(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: any(until > self.now for until in self.reset_at.values()))
    @rule(data=st.data())
    def advance_to_a_reset(self, data: st.DataObject) -> None:
        """Lands exactly on a reset, where the key must be back."""
        pending = sorted(until for until in self.reset_at.values() if until > self.now)
        self.now = data.draw(st.sampled_from(pending), label="reset")

    # -- invariants

    @invariant()
    def usable_keys_match_the_model(self) -> None:
        for i, key in enumerate(self.pool.keys):
            assert self.pool.is_usable(key, self.now) == self.model_usable(i)
        expected = [k for i, k in enumerate(self.pool.keys) if self.model_usable(i)]
        assert self.pool.usable(self.now) == expected

    @invariant()
    def counters_match_the_model(self) -> None:
        cooling = [i for i in range(self.n) if i not in self.disabled and not self.model_usable(i)]
        assert self.pool.cooling_down(self.now) == len(cooling)
        assert self.pool.disabled() == len(self.disabled)
        assert self.pool.earliest_reset(self.now) == self.model_earliest_reset()


KeyPoolMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
TestKeyPoolMachine = KeyPoolMachine.TestCase
