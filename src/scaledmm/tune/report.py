"""The closing table of a tuning run: per shape and M, the winner and what it gains."""

from __future__ import annotations

from scaledmm.configs import MatmulConfig


def _ratio(base: float | None, ours: float) -> str:
    return "-" if base is None else f"{base / ours:.2f}"


def closing_table(results: list[dict]) -> str:
    """One line per tuned point: winning backend and config, its time, and its speedup over the
    vendor kernel and over the untuned heuristic (>1: the winner is faster)."""
    if not results:
        return "no point was tuned in this run (each is in the config files already, or the time ran out)"
    lines = [
        f"{'N':>6} {'K':>6} {'dtype':<5} {'M':>5}  {'winner':<7} {'config':<29} {'us':>8} "
        f"{'x vendor':>9} {'x heuristic':>12}"
    ]
    for r in sorted(results, key=lambda r: (r["dtype"], r["n"], r["k"], r["m"])):
        base = r["baselines_us"]
        cfg = str(MatmulConfig.from_dict(r["config"]))
        lines.append(
            f"{r['n']:>6} {r['k']:>6} {r['dtype']:<5} {r['m']:>5}  {r['backend']:<7} {cfg:<29} "
            f"{r['time_us']:>8.1f} {_ratio(base.get('torch'), r['time_us']):>9} "
            f"{_ratio(base.get('heuristic'), r['time_us']):>12}"
        )
    return "\n".join(lines)
