"""Lineage: how each candidate was made, and the machine it was measured on."""

from __future__ import annotations

from html import escape

from smallfit.report.facts import Facts
from smallfit.report.fmt import (
    flat,
)


def lineage(f: Facts) -> str:
    items = []
    for c in f.candidates:
        lin = c.lineage
        facts = []
        for key in (
            "base",
            "teacher",
            "recipe",
            "trained_on",
            "train_examples",
            "tiers",
            "target",
            "compressed_from",
        ):
            if lin.get(key) not in (None, "", []):
                value = lin[key]
                value = " → ".join(value) if isinstance(value, list) else value
                facts.append(
                    f"<dt>{escape(key.replace('_', ' '))}</dt><dd>{escape(str(value))}</dd>"
                )
        training = lin.get("training") or {}
        if training:
            bits = [
                f"{k.replace('_', ' ')} {training[k]}"
                for k in ("epochs", "steps", "seconds", "best_dev_agreement", "stopped_by")
                if training.get(k) is not None
            ]
            cfg = training.get("config") or {}
            bits += [f"{k} {cfg[k]}" for k in ("lr", "batch_size", "max_length") if k in cfg]
            if bits:
                facts.append(f"<dt>training</dt><dd>{escape(', '.join(bits))}</dd>")
        for i, step in enumerate(lin.get("compression") or [], 1):
            conf = ", ".join(
                f"{k} ({flat(v)})" if isinstance(v, dict) else f"{k} {v}"
                for k, v in step.items()
                if k not in ("method", "metrics", "seconds") and v is not None
            )
            metrics = step.get("metrics") or {}
            checks = ", ".join(
                f"{k.replace('_', ' ')} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            )
            facts.append(
                f"<dt>step {i}: {escape(str(step.get('method')))}</dt>"
                f"<dd>{escape(conf)}{' — ' + escape(checks) if checks else ''}</dd>"
            )
        items.append(
            f'<div class="lineage" data-candidate="{escape(c.name)}"><h3>{escape(c.name)}'
            f" <small>{escape(c.backend)}</small></h3><dl>{''.join(facts)}</dl>"
            "</div>"
        )
    env = f.results.environment
    settings = ", ".join(sorted({t for c in f.candidates for t in c.speed.threads}, key=int))
    flags = ", ".join(k for k, v in (env.get("cpu_flags") or {}).items() if v)
    packages = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())
    env_rows = [
        ("CPU", f"{env.get('cpu_model', '?')} ({flags})"),
        (
            "cores",
            f"{env.get('logical_cores', '?')} logical, {env.get('usable_cores', '?')} usable",
        ),
        ("threads", f"torch {env.get('torch_threads', '?')}; latency at {settings} thread(s)"),
        ("python", f"{env.get('python', '?')} on {env.get('platform', '?')}"),
        ("packages", packages),
        ("measured", str(env.get("timestamp", "?"))),
    ]
    return (
        '<section id="lineage"><h2>Lineage and environment</h2>'
        + '<div class="lineages">'
        + "".join(items)
        + '</div><table class="small" id="environment"><tbody>'
        + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in env_rows)
        + "</tbody></table></section>"
    )
