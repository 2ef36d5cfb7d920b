"""DIR/report.html of `chattune tune`: trials table, optimisation history, Optuna's parameter importances, and the
best trial against trial 0 (the config as given) on the held-out conversations, with a paired bootstrap interval.
Figures are matplotlib PNGs inside the page (nothing is loaded from a network)."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from chattune.evaluate.bootstrap import paired_bootstrap
from chattune.files import atomic_write_text


def _perplexity(items: list[tuple[float, int]]) -> float:
    return math.exp(sum(nll for nll, _ in items) / sum(tokens for _, tokens in items))


def best_vs_baseline(best, baseline, seed: int = 0) -> dict | None:
    """Held-out perplexity of both, the change and its 95% paired bootstrap interval over conversations."""
    if baseline is None or best.number == baseline.number:
        return None
    pairs = [list(zip(t.user_attrs["nll"], t.user_attrs["tokens"])) for t in (baseline, best)]
    low, high = paired_bootstrap(pairs[0], pairs[1], _perplexity, seed=seed)
    return {"baseline": _perplexity(pairs[0]), "best": _perplexity(pairs[1]),
            "delta": _perplexity(pairs[1]) - _perplexity(pairs[0]), "ci": [low, high]}


def _history_png(trials) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in trials if t.value is not None]
    figure, axes = plt.subplots(figsize=(6, 3))
    axes.plot([t.number for t in done], [t.value for t in done], "o", label="trial")
    best_so_far = [min(t.value for t in done[: index + 1]) for index in range(len(done))]
    axes.step([t.number for t in done], best_so_far, where="post", label="best so far")
    axes.set_xlabel("trial")
    axes.set_ylabel("held-out perplexity")
    axes.legend()
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _importances(study) -> dict[str, float]:
    import optuna

    try:  # needs at least two finished trials that differ
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return {}


def write_tune_report(study, best, baseline, path: Path) -> dict | None:
    comparison = best_vs_baseline(best, baseline)
    rows = "".join(
        f"<tr><td>{t.number}</td><td>{t.state.name}</td><td>{'' if t.value is None else f'{t.value:.3f}'}</td>"
        f"<td>{html.escape(' '.join(t.user_attrs.get('overrides', [])) or '(config as given)')}</td></tr>"
        for t in study.trials)
    importances = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in _importances(study).items())
    if comparison:
        verdict = (f"<p>Best trial {best.number}: held-out perplexity {comparison['best']:.3f} vs "
                   f"{comparison['baseline']:.3f} for trial 0 (the config as given); change "
                   f"{comparison['delta']:+.3f}, 95% interval [{comparison['ci'][0]:+.3f}, {comparison['ci'][1]:+.3f}]"
                   f" (paired bootstrap over held-out conversations).</p>")
    else:
        verdict = "<p>The config as given (trial 0) is the best trial so far.</p>"
    atomic_write_text(path, f"""<!doctype html><html><head><meta charset="utf-8"><title>chattune tune</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:2px 8px;text-align:left}}</style>
</head><body><h1>chattune tune: {html.escape(study.study_name)}</h1>{verdict}
<h2>Optimisation history</h2><img alt="history" src="data:image/png;base64,{_history_png(study.trials)}">
<h2>Parameter importances (Optuna fANOVA)</h2><table><tr><th>parameter</th><th>importance</th></tr>{importances}</table>
<h2>Trials</h2><table><tr><th>#</th><th>state</th><th>perplexity</th><th>values</th></tr>{rows}</table>
</body></html>
""")
    return comparison
