"""The task from captured traffic: templates found and cut, answers' form and labels,
duplicates merged, and the files ``smallfit task`` writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from smallfit.capture import CaptureStore, Exchange
from smallfit.capture.dedup import clusters
from smallfit.capture.task import build_task
from smallfit.config import FitConfig, load_fit_config
from smallfit.errors import SmallfitError
from smallfit.llm.template import find_templates

SYSTEM = "You route support tickets. Reply with the queue name only."
FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "route",
        "schema": {
            "type": "object",
            "properties": {"queue": {"type": "string", "enum": ["billing", "tech", "other"]}},
            "required": ["queue"],
        },
    },
}


def _request(text: str, *, system: str = SYSTEM, fmt: dict | None = None) -> dict:
    body = {
        "model": "big-model",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": f'Ticket: "{text}"\nQueue?'},
        ],
    }
    return body | ({"response_format": fmt} if fmt else {})


def _exchange(request: dict, answer: str | None, *, complete: bool = True) -> Exchange:
    response = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
    return Exchange(
        source="proxy",
        path="/v1/chat/completions",
        complete=complete,
        request=request,
        response=response if complete else None,
        answer=answer,
        status=200 if complete else 502,
        error=None if complete else "down",
        prompt_tokens=40,
        completion_tokens=3,
        latency_ms=250.0,
    )


TICKETS = [
    ("I was charged twice this month", "billing"),
    ("The app crashes when I open settings", "tech"),
    ("Refund my last invoice please", "billing"),
    ("Wi-Fi login page never loads", "tech"),
    ("Where is your office?", "other"),
    ("I was charged twice this month!", "billing"),  # an exact duplicate, once normalised
    ("The app crashes when I open setings", "tech"),  # a near duplicate (a typo)
    ("Do you sell gift cards?", "other"),
]


def test_templates_are_found_and_cut() -> None:
    requests = [_request(t) for t, _ in TICKETS] + [_request("Hi", system="Other task")]
    templates, which = find_templates(requests)
    assert [t.requests for t in templates] == [8, 1] and which[:8] == [0] * 8 and which[8] == 1
    main = templates[0]
    assert (main.prefix, main.suffix) == ('Ticket: "', '"\nQueue?')
    assert main.cut(_request("New text")) == "New text"
    assert main.cut(_request("New text", system="changed")) is None
    assert main.cut({"messages": [{"role": "user", "content": "no template"}]}) is None
    # a word every text opens with stays in the text: the prefix ends at a boundary
    same_start = [_request(f"I need {x}") for x in ("a refund", "help", "a new card")]
    (t,), _ = find_templates(same_start)
    assert t.cut(same_start[0]) == "I need a refund"


def test_near_and_exact_duplicates_merge() -> None:
    texts = [t for t, _ in TICKETS]
    roots = clusters(texts)
    assert roots[5] == 0 and roots[6] == 1
    assert len(set(roots)) == 6
    assert clusters(texts, threshold=1.0)[6] == 6  # exact only


def test_build_task_writes_an_editable_task(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    with CaptureStore(db) as store:
        rows = [_exchange(_request(t, fmt=FORMAT), json.dumps({"queue": q})) for t, q in TICKETS]
        rows.append(_exchange(_request("Printer jammed", fmt=FORMAT), None, complete=False))
        rows.append(_exchange(_request("Bad answer", fmt=FORMAT), "not json"))
        store.add_now(rows)
        summary = build_task(store, tmp_path / "task", upstream="http://127.0.0.1:9/v1")
    assert summary.answers.form == "json" and summary.answers.key == "queue"
    assert summary.labels == {"billing": 2, "tech": 2, "other": 2}
    counts = summary.counts
    assert counts["incomplete"] == 1 and counts["unparseable"] == 1
    assert (counts["exact_duplicates"], counts["near_duplicates"]) == (1, 1)
    data = [
        json.loads(line) for line in (tmp_path / "task" / "data.jsonl").read_text().splitlines()
    ]
    assert [d["text"] for d in data][:2] == [TICKETS[0][0], TICKETS[1][0]]
    assert data[0]["upstream"] == "billing" and data[0]["latency_ms"] == 250.0
    assert "upstream" not in data[-1]  # the unparseable answer: a text for the teacher
    task = yaml.safe_load((tmp_path / "task" / "task.yaml").read_text())
    assert task["template"]["user_prefix"] == 'Ticket: "' and task["answer"]["key"] == "queue"
    fit = yaml.safe_load((tmp_path / "task" / "fit.yaml").read_text())
    config = FitConfig.model_validate(fit)  # a config fit accepts as it is
    teacher = config.teacher
    assert teacher.source == "llm" and teacher.answer_key == "queue"  # type: ignore[union-attr]
    assert teacher.response_format == FORMAT  # type: ignore[union-attr]
    assert teacher.context[0]["content"] == SYSTEM  # type: ignore[union-attr]
    assert teacher.instruction == 'Ticket: "{text}"\nQueue?'  # type: ignore[union-attr]
    assert config.data.labels == ["billing", "tech", "other"] and config.data.leakage == "error"


def test_a_capture_of_two_tasks_asks_which(tmp_path: Path) -> None:
    with CaptureStore(tmp_path / "c.sqlite") as store:
        store.add_now([_exchange(_request(t), q) for t, q in TICKETS])
        store.add_now([_exchange(_request(t, system="Sentiment?"), "pos") for t, _ in TICKETS[:3]])
        with pytest.raises(SmallfitError) as info:
            build_task(store, tmp_path / "task")
        message = str(info.value)
        assert "holds 2 different tasks" in message and "--template N" in message
        assert "1. 8 requests to big-model" in message and "2. 3 requests" in message
        summary = build_task(store, tmp_path / "task", template=1)
    assert summary.answers.form == "label" and sorted(summary.labels) == [
        "billing",
        "other",
        "tech",
    ]
    assert summary.counts["other_templates"] == 3


def test_the_task_command_writes_the_demos_stages(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from smallfit.cli import main

    with CaptureStore(tmp_path / "c.sqlite") as store:
        store.add_now([_exchange(_request(t), q) for t, q in TICKETS])
    out = tmp_path / "task"
    result = CliRunner().invoke(main, ["task", str(tmp_path / "c.sqlite"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "6 distinct texts (6 answered by the upstream)" in result.output
    assert f"smallfit fit --config {out / 'fit.yaml'}" in result.output
    config = load_fit_config(out / "fit.yaml")
    assert [s.name for s in config.students] == ["minilm-l6", "linear", "static"]
    assert config.compress is not None and config.teacher.source == "llm"
    missing = CliRunner().invoke(main, ["task", str(tmp_path / "nope.sqlite")])
    assert missing.exit_code == 2 and "no such capture file" in missing.output


def test_tag_and_sentence_boundaries_end_a_template() -> None:
    tagged = [
        {"messages": [{"role": "user", "content": f"<review>{t}</review>"}]}
        for t in ("Good value.", "Great screen", "Grim support")
    ]
    (t,), _ = find_templates(tagged)
    assert (t.prefix, t.suffix) == ("<review>", "</review>")
    told = [
        {"messages": [{"role": "user", "content": f"Classify this review. {t}"}]}
        for t in ("Good value", "Great screen", "Grim support")
    ]
    (t,), _ = find_templates(told)
    assert t.prefix == "Classify this review. " and t.cut(told[1]) == "Great screen"


def test_the_capture_the_template_and_the_served_route_read_a_message_alike() -> None:
    """Text parts are joined the same way wherever a request is read (the capture's text, the
    task's template, the drop-in route's), so a template cut from captured traffic cuts the
    served request's text to the same string; parts that are not text are left out."""
    from smallfit.llm.template import last_user_text, split_request
    from smallfit.serve.chat import chat_request_model
    from smallfit.serve.chat import last_user_text as served_text
    from smallfit.serve.config import ServeConfig

    parts = [{"type": "text", "text": "Label: "}, {"type": "text", "text": "my card is lost"}]
    request = {"model": "m", "messages": [{"role": "user", "content": parts}]}
    assert last_user_text(request) == "Label: my card is lost"
    split = split_request(request)
    assert split is not None and split[2] == "Label: my card is lost"
    served = chat_request_model(ServeConfig()).model_validate(request)
    assert served_text(served) == "Label: my card is lost"
    image = {"type": "image_url", "image_url": {"url": "x"}}
    assert last_user_text({"messages": [{"role": "user", "content": [image]}]}) is None
