"""The LLM teacher's parts that need no server: prompts, parsing, logprob probabilities,
retry waits, the store's exactly-once answers and its ledger."""

from __future__ import annotations

import math
import random

import pytest

from smallfit.config import LLMTeacher
from smallfit.errors import SmallfitError
from smallfit.llm.answers import logprob_distribution, parse_label, vote_share
from smallfit.llm.client import backoff_s, resolve_endpoint, retry_after_s
from smallfit.llm.prompt import Prompt, check_template, draw_examples
from smallfit.llm.store import Store, StoredAnswer, answer_key

LABELS = ["card_arrival", "card_activation", "cash_withdrawal"]


def test_template_needs_text_slot_and_known_slots() -> None:
    with pytest.raises(ValueError, match=r"no \{text\} slot"):
        check_template("Classify: {labels}")
    with pytest.raises(ValueError, match="unknown slots"):
        check_template("{text} {lables}")
    with pytest.raises(ValueError, match="malformed"):
        check_template("{text} {")
    check_template('{labels}\n{text} answer {{"label": ...}}')


def test_config_rejects_template_without_text_slot() -> None:
    with pytest.raises(ValueError, match=r"instruction[\s\S]*no \{text\} slot"):
        LLMTeacher(model="m", instruction="Pick one of {labels}")


def test_prompt_needs_two_labels_and_known_descriptions() -> None:
    with pytest.raises(SmallfitError, match="at least two labels"):
        Prompt(template="{text}", labels=["only"])
    with pytest.raises(SmallfitError, match="not in the data"):
        Prompt(template="{text}", labels=["a", "b"], descriptions={"c": "x"})


def test_prompt_messages_and_fingerprint() -> None:
    prompt = Prompt(
        template="{labels}\nText: {text}",
        labels=LABELS,
        descriptions={"card_arrival": "where is my card"},
        examples=[("my card is late", "card_arrival")],
    )
    messages = prompt.messages("hello")
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[-1]["content"].endswith("Text: hello")
    assert "- card_arrival: where is my card" in messages[-1]["content"]
    assert messages[1]["content"] == '{"label": "card_arrival"}'
    enum = prompt.response_format()["json_schema"]["schema"]["properties"]["label"]["enum"]
    assert enum == LABELS
    other = Prompt(template="{labels}\nText: {text}", labels=LABELS)
    assert prompt.fingerprint != other.fingerprint
    assert Prompt.from_dict(prompt.to_dict()).fingerprint == prompt.fingerprint


def test_few_shot_draw_is_seeded_and_covers_labels_first() -> None:
    texts = [f"t{i}" for i in range(30)]
    labels = [LABELS[i % 3] for i in range(30)]
    a = draw_examples(texts, labels, 4, seed=1)
    assert a == draw_examples(texts, labels, 4, seed=1)
    assert {lab for _, lab in a[:3]} == set(LABELS)
    assert len(a) == 4 and len({t for t, _ in a}) == 4


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"label": "card_arrival"}', "card_arrival"),
        ('Sure! {"label": "cash_withdrawal"} hope it helps', "cash_withdrawal"),
        ("card_activation", "card_activation"),
        ("  Card_Activation. ", "card_activation"),
        ("The answer is cash_withdrawal.", "cash_withdrawal"),
        ("card_arrival or card_activation", None),  # two labels: ambiguous
        ('{"label": "lost_card"}', None),  # not a label
        ('{"label": "card_arr', None),  # truncated
        ("", None),
        (None, None),
    ],
)
def test_parse_label_never_guesses(reply: str | None, expected: str | None) -> None:
    assert parse_label(reply, LABELS) == expected


def _token(text: str, logprob: float, alts: list[tuple[str, float]]) -> dict:
    return {
        "token": text,
        "logprob": logprob,
        "top_logprobs": [{"token": t, "logprob": lp} for t, lp in [(text, logprob), *alts]],
    }


def test_logprob_distribution_follows_prefixes() -> None:
    content = '{"label": "card_arrival"}'
    tokens = [
        _token('{"', 0.0, []),
        _token("label", 0.0, []),
        _token('":', 0.0, []),
        _token(' "', 0.0, []),
        _token("card", math.log(0.8), [("cash", math.log(0.15))]),
        _token("_ar", math.log(0.9), [("_act", math.log(0.1))]),
        _token("rival", 0.0, []),
        _token('"}', 0.0, []),
    ]
    probs = logprob_distribution(content, tokens, "card_arrival", LABELS)
    assert probs is not None
    assert probs.sum() == pytest.approx(1.0)
    # at "card": card 0.8 vs cash 0.15, renormalised over the two; at "_ar": 0.9 vs 0.1
    first = 0.8 / 0.95
    assert probs == pytest.approx([first * 0.9, first * 0.1, 0.15 / 0.95], abs=1e-6)


def test_logprob_distribution_ignores_tokens_that_lead_to_no_label() -> None:
    content = '{"label": "card_arrival"}'
    tokens = [
        _token('{"label": "', 0.0, []),
        _token("card", math.log(0.5), [("one", math.log(0.3)), ("cash", math.log(0.2))]),
        _token("_arrival", 0.0, []),
        _token('"}', 0.0, []),
    ]
    probs = logprob_distribution(content, tokens, "card_arrival", LABELS)
    assert probs == pytest.approx([0.5 / 0.7, 0.0, 0.2 / 0.7], abs=1e-6)


def test_logprob_distribution_with_no_branches_is_one_hot() -> None:
    content = "card_arrival"
    tokens = [_token("card_arrival", math.log(0.7), [("lost", math.log(0.2))])]
    probs = logprob_distribution(content, tokens, "card_arrival", LABELS)
    assert probs == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)


def test_logprob_distribution_refuses_misaligned_tokens() -> None:
    assert logprob_distribution("abc", [_token("ab", 0.0, [])], "card_arrival", LABELS) is None
    assert logprob_distribution("", [], "card_arrival", LABELS) is None


def test_vote_share() -> None:
    assert vote_share(["card_arrival", None, "card_arrival", "cash_withdrawal"], LABELS) == (
        pytest.approx([2 / 3, 0, 1 / 3])
    )
    assert vote_share([None, None], LABELS) is None


def test_retry_after_headers() -> None:
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "100000"}) == 120.0  # capped
    assert retry_after_s({}) is None
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # past
    rng = random.Random(0)
    waits = [backoff_s(a, rng) for a in range(8)]
    assert all(0 <= w <= min(30.0, 0.5 * 2**a) for a, w in enumerate(waits))
    assert [backoff_s(a, random.Random(0)) for a in range(3)] == [
        backoff_s(a, random.Random(0)) for a in range(3)
    ]


def test_endpoint_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMALLFIT_LLM_BASE_URL", "http://127.0.0.1:1/v1/")
    monkeypatch.setenv("SMALLFIT_LLM_MODEL", "m")
    endpoint = resolve_endpoint(None, None)
    assert (endpoint.base_url, endpoint.model) == ("http://127.0.0.1:1/v1", "m")
    assert "key" not in str(endpoint.to_dict()).replace("api_key_env", "")
    monkeypatch.delenv("SMALLFIT_LLM_MODEL")
    with pytest.raises(SmallfitError, match="no model named"):
        resolve_endpoint(None, None)
    with pytest.raises(SmallfitError, match="not an http"):
        resolve_endpoint("ftp://x", "m")


def _answer(label: str | None) -> StoredAnswer:
    return StoredAnswer(label, "ok" if label else "unparseable", None, "r", 10, 2, 0.001)


def test_store_answers_once_and_estimates_unseen_usage(tmp_path) -> None:
    store = Store(tmp_path / "s.sqlite")
    key = answer_key("m", "f", "hello")
    first = store.begin(key, model="m", attempt=0)
    store.finish(first, status="timeout", error="slow")
    second = store.begin(key, model="m", attempt=1)
    store.finish(
        second, status="ok", prompt_tokens=10, completion_tokens=2, cost_usd=0.001, latency_ms=5.0
    )
    store.put(key, model="m", fingerprint="f", text="hello", answer=_answer("card_arrival"))
    store.put(key, model="m", fingerprint="f", text="hello", answer=_answer("cash_withdrawal"))
    assert store.get([key])[key].label == "card_arrival"
    totals = store.totals()
    assert totals["measured"] == {"prompt_tokens": 10, "completion_tokens": 2, "cost_usd": 0.001}
    assert totals["estimated"]["prompt_tokens"] == 10  # the timed-out attempt, estimated
    assert totals["usage_unknown_requests"] == 0
    # an attempt left 'sent' by a dead process is 'interrupted' on the next open
    store.begin(answer_key("m", "f", "other"), model="m", attempt=0)
    store.close()
    reopened = Store(tmp_path / "s.sqlite")
    assert reopened.interrupted == 1
    assert reopened.totals()["by_status"]["interrupted"] == 1
    assert reopened.totals()["usage_unknown_requests"] == 1


def test_store_rejects_a_file_that_is_not_sqlite(tmp_path) -> None:
    bad = tmp_path / "cache.sqlite"
    bad.write_text("not a database " * 100)
    with pytest.raises(SmallfitError, match="not a usable answer cache"):
        Store(bad)
