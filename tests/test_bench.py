"""`python -m bot bench`: it runs to the end with tiny settings and prints the whole table; its
helpers compute percentiles, lay the table out, and build the load mix it claims."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from helpers import service_loop

from bot.bench import (
    MIX,
    ROW_LABELS,
    Row,
    percentile,
    proposal_body,
    render_table,
)
from bot.domain import ProposalIn, Tier
from bot.policy import load_policy

ROOT = Path(__file__).resolve().parent.parent


def table_rows(out: str) -> dict[str, list[str]]:
    """measure -> [result, target, detail] from the Markdown table on stdout."""
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        if not line.startswith("| ") or line.startswith("| measure "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows


def test_the_bench_runs_to_the_end_and_prints_every_figure() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "bench", "--seconds", "2", "--rate", "50", "--agents", "4", "--soak", "2"],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for phase in range(1, 6):
        assert f"phase {phase}/5" in proc.stderr  # one progress line per phase
    assert f"SQLite, 1 replica, {service_loop()} loop, 4 agents" in proc.stdout
    rows = table_rows(proc.stdout)
    assert set(ROW_LABELS) <= set(rows), set(ROW_LABELS) - set(rows)
    for label in ROW_LABELS:
        assert re.search(r"\d", rows[label][0]), (label, rows[label])  # a figure, not n/a
        assert "nan" not in rows[label][0].lower(), (label, rows[label])

    def number(label: str) -> float:
        return float(re.match(r"[\d,.]+", rows[label][0]).group().replace(",", ""))  # type: ignore[union-attr]

    assert number("intake throughput, saturation") > 0
    assert number("bare aiohttp, same load") > 0
    assert number("intake latency p50") <= number("intake latency p99")
    assert number("intake to committed p50") <= number("intake to committed p99")
    assert rows["non-202 answers"][0].startswith("0 of ")  # every proposal was accepted
    batched = number("CRM calls per committed change, batched")
    unbatched = number("CRM calls per committed change, unbatched")
    assert 0 < batched < unbatched, (batched, unbatched)
    assert unbatched >= 1.0  # a read and a write per change without batching
    assert number("changes failed") == 0
    assert number("peak RSS per server process") > 10  # MB of a real Python process
    assert rows["intake latency p99"][1] == "< 50 ms"  # the targets are printed next to the figures
    assert rows["CRM calls per committed change, batched"][1] == "<= 0.05"
    # --soak adds its row: RSS at the start and the end of the steady load
    assert re.fullmatch(r"[+-]\d+\.\d %", rows["RSS growth over the soak"][0]), rows["RSS growth over the soak"]
    assert re.search(r"\d+ -> \d+ MB", rows["RSS growth over the soak"][2])
    assert number("rollback of 1,000 changes") <= 25  # 10 reads and 10 writes of 100


def test_percentile_interpolates_between_ranks() -> None:
    values = list(range(100, 0, -1))  # 1..100, unsorted
    assert percentile(values, 50) == 50.5
    assert percentile(values, 99) == 99.01
    assert percentile(values, 0) == 1 and percentile(values, 100) == 100
    assert percentile([0.25], 99) == 0.25
    assert math.isnan(percentile([], 50))


def test_table_is_aligned_markdown_with_a_target_column() -> None:
    table = render_table(
        [Row("intake latency p99", "12.5 ms", "< 50 ms", "at 200/s"), Row("total wall time", "81 s")],
        "title line",
    )
    lines = table.splitlines()
    assert lines[0] == "title line" and lines[1] == ""
    grid = lines[2:]
    assert grid[0].split("|")[1:5] == [" measure            ", " result  ", " target  ", " detail   "]
    assert set(grid[1]) == {"|", "-"}
    assert len({len(line) for line in grid}) == 1  # every row as wide as the header
    assert "| total wall time    | 81 s    | -       |" in grid[3]  # no target: a dash


def test_the_load_mix_is_what_the_table_says_and_every_body_is_valid() -> None:
    policy = load_policy(ROOT / "tiers.yaml")
    tiers: Counter[str] = Counter()
    records = set()
    for i in range(100):
        body = json.loads(proposal_body(i, "t", deals=2000))
        proposal = ProposalIn.model_validate(body)  # what intake accepts
        records.add(proposal.record_id)
        for name in proposal.changes:
            tiers[f"{name}:{policy.classify('hubspot', 'deals', name).tier.value}"] += 1
        for activity in proposal.activities:
            tiers[f"{activity.kind}:{policy.classify_activity('hubspot', 'deals', activity.kind).tier.value}"] += 1
    assert tiers == {
        f"description:{Tier.AUTONOMOUS.value}": 95,
        f"amount:{Tier.NEVER_AUTONOMOUS.value}": 3,
        f"dealstage:{Tier.REVIEWED.value}": 1,
        f"note:{Tier.AUTONOMOUS.value}": 1,
    }
    assert "95% description" in MIX and "1% dealstage" in MIX
    assert len(records) == 100  # distinct deals within any run of 100 proposals
    assert proposal_body(7, "a", 2000) != proposal_body(7, "b", 2000)  # each phase writes new values
