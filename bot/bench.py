"""`python -m bot bench`: the gate under load, against the HubSpot and Slack stand-ins.

The stand-ins run on threads of this process; the gate runs as real `python -m bot serve`
subprocesses (one, or two replicas on one database) on free ports; the agents are an
aiohttp client in this process with keep-alive connections and bodies built before each phase.
The phases, each printing a progress line to stderr:

1. bare aiohttp: a minimal aiohttp app (`python -m bot.bench bare --port N`: read the body, parse
   the JSON, answer 202) under the same closed-loop load as the gate, for the gate/bare ratio;
2. batching off: a gate with COMMIT_BATCH_SIZE=1, COMMIT_LINGER=0 and no pacing (COMMIT_ and
   REVIEW_BUDGET_SHARE=1), a short open-loop load at the
   commit rate: CRM calls per committed change without batching;
then one gate (or two replicas) on a fresh ledger with the default batching, after a warm-up:
3. open loop at the commit rate (--commit-rate, default 100/s): intake to committed, CRM calls per
   committed change, 429s, failures, Slack calls per reviewed proposal;
   then a rollback: 1,000 autonomous changes of one agent run, committed, undone with
   `python -m bot rollback run:... --yes`, its CRM calls counted at the stand-in;
4. open loop at --rate (default 200/s): intake latency, measured from the moment each request was
   due (so a server that falls behind cannot hide its queue in the client's connection pool);
5. closed loop, --agents requests always in flight: intake throughput at saturation;
then the peak RSS and the RSS growth of every server process, and how much the committer got done
while intake was loaded (phases 4 and 5).

ONE table goes to stdout, with the team's targets in a column next to the figures; nothing is
asserted here. Every subprocess, stand-in, temporary file and PostgreSQL database is removed at the
end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
FIRST_DEAL = 300_000
STAGES = ("qualifiedtobuy", "presentationscheduled", "decisionmakerboughtin", "contractsent")
OWNER_IDS = ("101", "102", "103")

# The mix, per 100 proposals (by i % 100): 95 autonomous `description` writes, 3 blocked `amount`
# changes, 1 reviewed `dealstage` move, 1 note. Reviews are kept rare on purpose: routing one
# reads the record and its owner from the CRM one by one (3 requests of a 100 per 10 s budget),
# so a few percent of reviews at 100/s would spend the whole budget.
BLOCKED_SLOTS = frozenset({25, 60, 90})
REVIEWED_SLOT = 50
NOTE_SLOT = 0
ROLLBACK_CHANGES = 1_000
MIX = "95% description (autonomous), 3% amount (blocked), 1% dealstage (reviewed), 1% note"

# Row labels of the table (the test checks every one is printed).
ROW_LABELS = (
    "intake throughput, saturation",
    "bare aiohttp, same load",
    "gate / bare",
    "intake latency p50",
    "intake latency p99",
    "non-202 answers",
    "CPU at saturation, server / bench",
    "CRM calls per committed change, batched",
    "CRM calls per committed change, unbatched",
    "commits while intake is loaded",
    "intake to committed p50",
    "intake to committed p99",
    "429s from the CRM stand-in",
    "changes failed",
    "Slack calls per reviewed proposal",
    "peak RSS per server process",
    "RSS growth after warm-up",
    "rollback of 1,000 changes",
    "total wall time",
)


class BenchError(Exception):
    """The bench could not run to the end (a server did not start, the CLI failed...)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop after cleaning up."""


# --- small helpers (tested on their own) --------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * min(100.0, max(0.0, q)) / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def fmt_ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    ms = seconds * 1000
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.1f} ms"


def fmt_num(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


@dataclass(frozen=True)
class Row:
    measure: str
    result: str
    target: str = ""
    detail: str = ""


def render_table(rows: Sequence[Row], title: str = "") -> str:
    """A Markdown table: measure | result | target | detail."""
    header = ("measure", "result", "target", "detail")
    cells = [header] + [(r.measure, r.result, r.target or "-", r.detail) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [title, ""] if title else []
    out.append(line(header))
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.extend(line(c) for c in cells[1:])
    return "\n".join(out)


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proposal_body(i: int, tag: str, deals: int, *, mix: str = "mixed") -> bytes:
    """The i-th proposal of a phase, round-robin over the seeded deals: the mix above; or only
    autonomous `description` writes (`mix="autonomous"`); or a change to a read-only field
    (`mix="refused"`: the whole intake path, and no CRM work after)."""
    record = str(FIRST_DEAL + i % deals)
    slot = i % 100
    body: dict[str, Any] = {"object": "deals", "record_id": record}
    if mix == "refused":
        body["changes"] = {"pipeline": "default"}
    elif mix == "autonomous":
        body["changes"] = {"description": f"Bench {tag}-{i}: to be rolled back."}
    elif slot == NOTE_SLOT:
        body["activities"] = [{"kind": "note", "body": f"Bench note {tag}-{i}: call summary."}]
    elif slot == REVIEWED_SLOT:
        body["changes"] = {"dealstage": STAGES[(i // 100) % len(STAGES)]}
    elif slot in BLOCKED_SLOTS:
        body["changes"] = {"amount": 50_000 + i}
    else:
        body["changes"] = {"description": f"Bench {tag}-{i}: renewal discussed, next call booked."}
    body["reason"] = "bench load"
    body["run_id"] = f"bench-{tag}"
    return json.dumps(body, separators=(",", ":")).encode()


# --- the bare aiohttp app -----------------------------------------------------------------------


def bare_app() -> web.Application:
    """What the gate is compared with: parse the JSON, answer 202, nothing else."""
    answer = json.dumps({"id": "prp_bare", "status": "accepted", "changes": []})

    async def propose(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if not isinstance(body, dict):
            return web.json_response({"error": "not an object"}, status=422)
        return web.Response(text=answer, status=202, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/proposals", propose)
    app.router.add_get("/healthz", healthz)
    return app


def bare_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.bench bare")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    from bot.loop import new_loop

    # The gate's own loop (EVENT_LOOP, bot/loop.py): the comparison is of the handlers alone.
    event_loop = new_loop(os.environ.get("EVENT_LOOP", "auto").lower())
    web.run_app(bare_app(), host="127.0.0.1", port=args.port, access_log=None, print=None, loop=event_loop)
    return 0


# --- processes ------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def spawn(*argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """create_subprocess_exec whose child is never lost: cancelled after the fork, it still
    returns the handle (and re-raises the cancellation) so the caller can stop the child."""
    task = asyncio.ensure_future(asyncio.create_subprocess_exec(*argv, **kwargs))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        proc = await task
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise


class Proc:
    """A subprocess with its log in a file, reachable on 127.0.0.1:port."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _log_file(self) -> Any:
        return open(self.log_path, "ab")  # handed to the child; closed once it has started

    async def start(self, within: float = 60.0) -> Proc:
        log = self._log_file()
        try:
            self.proc = await spawn(
                *self.argv, env=self.env, cwd=str(self.workdir),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise BenchError(f"{self.name} exited with status {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    async with http.get(f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return self
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)
        raise BenchError(f"{self.name} did not answer /healthz within {within:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 15)
        except ProcessLookupError:
            pass
        except TimeoutError:
            proc.kill()
            await proc.wait()


# --- the ledger, read directly ------------------------------------------------------------------


class LedgerReader:
    """Reads the ledger through SQLAlchemy (the gate's own table definitions), never writing."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        args: dict[str, Any] = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
        self.engine = create_async_engine(url, **args)

    async def close(self) -> None:
        await self.engine.dispose()

    async def status_counts(self) -> Counter[str]:
        from sqlalchemy import func, select

        from bot.ledger.tables import changes

        async with self.engine.connect() as conn:
            rows = await conn.execute(select(changes.c.status, func.count()).group_by(changes.c.status))
            return Counter({status: count for status, count in rows})

    async def unsettled_since(self, since: datetime) -> int:
        """Changes still queued or committing, and reviews not routed yet, created since `since`."""
        from sqlalchemy import func, select

        from bot.ledger.tables import changes, proposals

        async with self.engine.connect() as conn:
            open_changes = await conn.scalar(
                select(func.count()).where(
                    changes.c.created_at >= since, changes.c.status.in_(("queued", "committing"))
                )
            )
            unrouted = await conn.scalar(
                select(func.count()).where(
                    proposals.c.created_at >= since, proposals.c.review_state == "unrouted"
                )
            )
        return int(open_changes or 0) + int(unrouted or 0)

    async def commit_delays(self, since: datetime, until: datetime) -> tuple[list[float], Counter[str]]:
        """Seconds from intake to committed of the changes created in the window, and the
        status of every change created in it (plus `committed field`: field changes committed)."""
        from sqlalchemy import select

        from bot.ledger.tables import changes

        delays: list[float] = []
        statuses: Counter[str] = Counter()
        window = (changes.c.created_at >= since) & (changes.c.created_at < until)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(changes.c.status, changes.c.kind, changes.c.created_at, changes.c.committed_at).where(window)
            )
            for status, kind, created, committed in rows:
                statuses[status] += 1
                if status == "committed" and kind == "field":
                    statuses["committed field"] += 1
                if status == "committed" and committed is not None:
                    delays.append((committed - created).total_seconds())
        return delays, statuses

    async def reviews(self, since: datetime, until: datetime) -> tuple[int, int]:
        """Proposals with a reviewed change created in the window: (all, posted to Slack)."""
        from sqlalchemy import func, select

        from bot.ledger.tables import proposals

        window = (
            (proposals.c.created_at >= since)
            & (proposals.c.created_at < until)
            & (proposals.c.review_state != "none")
        )
        async with self.engine.connect() as conn:
            total = await conn.scalar(select(func.count()).where(window))
            posted = await conn.scalar(select(func.count()).where(window & proposals.c.review_ts.is_not(None)))
        return int(total or 0), int(posted or 0)

    async def failures(self) -> list[str]:
        from sqlalchemy import select

        from bot.ledger.tables import changes

        async with self.engine.connect() as conn:
            rows = await conn.execute(select(changes.c.error).where(changes.c.status == "failed"))
            return [str(error or "") for (error,) in rows]


# --- the load -------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, 202s only
    elapsed: float = 0.0
    throughput: float = 0.0  # 202s per second over the measured window
    client_cpu: float = 0.0  # share of one core used by this process (client + stand-ins)
    server_cpu: list[float] = field(default_factory=list)  # share of one core, per server
    late: float = 0.0  # open loop: the latest a request was sent after it was due

    @property
    def ok(self) -> int:
        return self.statuses.get(202, 0)

    @property
    def not_ok(self) -> int:
        return self.sent - self.ok

    def problems(self) -> str:
        parts = [f"{n} x HTTP {s}" for s, n in sorted(self.statuses.items()) if s != 202]
        parts += [f"{n} x {e}" for e, n in sorted(self.errors.items())]
        return ", ".join(parts)


class Load:
    """The agents: one keep-alive connection pool per server, `agents` connections in all."""

    def __init__(self, urls: Sequence[str], key: str | None, agents: int, deals: int) -> None:
        self.urls = [f"{u}/v1/proposals" for u in urls]
        self.auth = f"Bearer {key}" if key else "Bearer bare"
        self.agents = agents
        self.deals = deals
        self.sessions: list[aiohttp.ClientSession] = []

    async def __aenter__(self) -> Load:
        per_server = max(1, math.ceil(self.agents / len(self.urls)))
        for _ in self.urls:
            self.sessions.append(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=per_server, keepalive_timeout=60),
                    timeout=aiohttp.ClientTimeout(total=120),
                    skip_auto_headers=("User-Agent",),
                )
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in self.sessions:
            await session.close()

    def bodies(self, tag: str, count: int, *, mix: str = "mixed") -> list[bytes]:
        return [proposal_body(i, tag, self.deals, mix=mix) for i in range(count)]

    async def _post(self, server: int, key: str, body: bytes, result: LoadResult) -> bool:
        headers = {"Authorization": self.auth, "Idempotency-Key": key, "Content-Type": "application/json"}
        try:
            async with self.sessions[server].post(self.urls[server], data=body, headers=headers) as resp:
                await resp.read()
                result.statuses[resp.status] += 1
                return resp.status == 202
        except (aiohttp.ClientError, TimeoutError) as exc:
            result.errors[type(exc).__name__] += 1
            return False

    async def closed_loop(
        self, tag: str, seconds: float, pids: Sequence[int], *, mix: str = "mixed"
    ) -> LoadResult:
        """Every agent sends its next proposal as soon as the last one is answered."""
        result = LoadResult()
        pool = self.bodies(tag, 40_000, mix=mix)
        counter = itertools.count()
        loop = asyncio.get_running_loop()
        done_at: list[float] = []
        start = loop.time()
        stop_at = start + seconds
        ramp = start + min(1.0, seconds * 0.2)  # connections open in the first moments
        cpu = _CpuWatch(pids)

        async def agent(j: int) -> None:
            server = j % len(self.urls)
            while loop.time() < stop_at:
                i = next(counter)
                result.sent += 1
                if await self._post(server, f"{tag}-{i}", pool[i % len(pool)], result):
                    done_at.append(loop.time())

        await asyncio.gather(*(agent(j) for j in range(self.agents)))
        end = loop.time()
        result.elapsed = end - start
        counted = sum(1 for t in done_at if ramp <= t <= stop_at)
        result.throughput = counted / max(1e-9, stop_at - ramp)
        result.client_cpu, result.server_cpu = cpu.shares()
        return result

    async def open_loop(
        self, tag: str, rate: float, seconds: float, pids: Sequence[int], *, mix: str = "mixed"
    ) -> LoadResult:
        """Proposals due at a fixed rate whatever the answers do; latency counts from when each
        was due, so time spent waiting for a free connection counts too."""
        result = LoadResult()
        count = max(1, int(rate * seconds))
        bodies = self.bodies(tag, count, mix=mix)
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        tasks: set[asyncio.Task[None]] = set()
        cpu = _CpuWatch(pids)

        async def one(i: int, due: float) -> None:
            if await self._post(i % len(self.urls), f"{tag}-{i}", bodies[i], result):
                result.latencies.append(loop.time() - due)

        for i in range(count):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                result.late = max(result.late, -delay)
            result.sent += 1
            task = asyncio.create_task(one(i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        result.elapsed = loop.time() - start
        result.throughput = result.ok / max(1e-9, result.elapsed)
        result.client_cpu, result.server_cpu = cpu.shares()
        return result


class _CpuWatch:
    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.wall = time.monotonic()
        self.own = time.process_time()
        self.servers = [proc_cpu(p) for p in self.pids]

    def shares(self) -> tuple[float, list[float]]:
        wall = max(1e-9, time.monotonic() - self.wall)
        own = (time.process_time() - self.own) / wall
        servers = [(proc_cpu(p) - before) / wall for p, before in zip(self.pids, self.servers, strict=True)]
        return own, servers


# --- the bench ------------------------------------------------------------------------------------


@dataclass
class Options:
    seconds: float = 15.0
    rate: float = 200.0
    agents: int = 256
    crm_latency: float = 0.1
    crm_limit: int = 100
    crm_window: float = 10.0
    db: str = "sqlite"
    replicas: int = 1
    commit_rate: float = 100.0
    deals: int = 2000
    soak: float = 0.0  # seconds of steady load at the commit rate; 0: no soak


@dataclass
class Figures:
    """Everything the table shows, filled in phase by phase."""

    bare: LoadResult | None = None
    saturation: LoadResult | None = None
    fixed: LoadResult | None = None
    commit_load: LoadResult | None = None
    warmup: LoadResult | None = None
    batched_calls: int = 0
    batched_committed: int = 0
    batched_breakdown: Counter[str] = field(default_factory=Counter)
    unbatched_calls: int = 0
    unbatched_committed: int = 0
    unbatched_breakdown: Counter[str] = field(default_factory=Counter)
    commit_delays: list[float] = field(default_factory=list)
    commit_statuses: Counter[str] = field(default_factory=Counter)
    drain_seconds: float = 0.0
    rate_limited: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    failed_unbatched: list[str] = field(default_factory=list)
    slack_calls: int = 0
    slack_alert_posts: int = 0
    reviews: int = 0
    reviews_posted: int = 0
    soak_rss: list[tuple[float, list[int]]] = field(default_factory=list)  # (seconds in, kB each)
    rollback_calls: int = 0
    rollback_reverted: int = 0
    rollback_seconds: float = 0.0
    rollback_breakdown: Counter[str] = field(default_factory=Counter)
    rss_warm: list[int] = field(default_factory=list)  # kB
    rss_steps: list[tuple[str, list[int]]] = field(default_factory=list)  # after each phase
    sustained_calls: int = 0  # CRM calls and committed changes over the 200/s and saturation phases
    sustained_committed: int = 0
    sustained_seconds: float = 0.0
    backlog_end: int = 0  # changes queued or committing when the last phase ended
    rss_end: list[int] = field(default_factory=list)
    rss_peak: list[int] = field(default_factory=list)
    wall: float = 0.0


def crm_breakdown(calls: Sequence[Any]) -> Counter[str]:
    out: Counter[str] = Counter()
    for call in calls:
        path = call.path
        if path.endswith("/batch/read"):
            out["batch read"] += 1
        elif path.endswith("/batch/update"):
            out["batch update"] += 1
        elif path.startswith("/crm/v3/objects/notes") or path.startswith("/crm/v3/objects/tasks"):
            out["notes"] += 1
        elif path.startswith("/crm/v3/owners"):
            out["owners"] += 1
        else:
            out["other"] += 1
    return out


class Bench:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.workdir = Path(tempfile.mkdtemp(prefix="crm-gate-bench-"))
        self.hubspot: Any = None
        self.slack: Any = None
        self.procs: list[Proc] = []
        self.databases: list[str] = []
        self.readers: list[LedgerReader] = []
        self.figures = Figures()
        self.tag = uuid.uuid4().hex[:6]
        self.interrupted = False  # set by the signal handler; checked between phases

    def check(self) -> None:
        """A cancellation can be swallowed by an await that completes in the same instant
        (asyncio.wait_for on Python 3.11): the flag is not."""
        if self.interrupted:
            raise Interrupted

    # --- set-up and clean-up -----------------------------------------------------------------
    def start_stand_ins(self) -> None:
        from bot.sandbox.hubspot import HubSpotStandIn
        from bot.sandbox.slack import SlackStandIn

        self.hubspot = HubSpotStandIn(token="bench-hubspot-" + uuid.uuid4().hex[:12], seed=True)
        for n in range(self.o.deals):
            self.hubspot.add_record(
                "deals",
                {
                    "dealname": f"Bench deal {n}",
                    "dealstage": "appointmentscheduled",
                    "pipeline": "default",
                    "amount": "10000",
                    "description": "",
                    "hubspot_owner_id": OWNER_IDS[n % len(OWNER_IDS)],
                },
                record_id=str(FIRST_DEAL + n),
            )
        self.hubspot.start_in_thread()
        self.hubspot.faults.latency = self.o.crm_latency
        self.hubspot.faults.rate_limit = self.o.crm_limit
        self.hubspot.faults.rate_window = self.o.crm_window
        self.slack = SlackStandIn(
            bot_token="xoxb-bench-" + uuid.uuid4().hex[:12],
            signing_secret=uuid.uuid4().hex,
            message_rate=None,  # Slack's 1 message/s per channel is not what is measured here
        )
        self.slack.start_in_thread()

    async def cleanup(self) -> None:
        for proc in self.procs:
            try:
                await proc.stop()
            except Exception as exc:  # keep cleaning up
                progress(f"could not stop {proc.name}: {exc}")
        for reader in self.readers:
            await reader.close()
        for stand_in in (self.hubspot, self.slack):
            if stand_in is not None:
                stand_in.stop_thread()
        for name in self.databases:
            try:
                await drop_pg_database(name)
            except Exception as exc:
                progress(f"could not drop database {name}: {exc}")
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def database(self, name: str) -> str:
        if self.o.db == "postgresql":
            db = f"gate_bench_{self.tag}_{name}"
            await create_pg_database(db)
            self.databases.append(db)
            return "postgresql+asyncpg://" + PG_ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0] + f"/{db}"
        return f"sqlite+aiosqlite:///{self.workdir / f'{name}.db'}"

    def env(self, database_url: str, **extra: str) -> dict[str, str]:
        from bot.sandbox import seed

        prefixes = ("SLACK_", "HUBSPOT_", "SALESFORCE_", "CRM", "DATABASE_URL", "COMMIT_", "REVIEW_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
        env.update(
            CRM="hubspot",
            HUBSPOT_ACCESS_TOKEN=self.hubspot.token,
            HUBSPOT_API_URL=self.hubspot.url,
            SLACK_BOT_TOKEN=self.slack.bot_token,
            SLACK_SIGNING_SECRET=self.slack.signing_secret,
            SLACK_API_URL=self.slack.api_url,
            SLACK_ALERTS_CHANNEL=seed.ALERTS_CHANNEL,
            DATABASE_URL=database_url,
            TIERS_FILE=os.environ.get("TIERS_FILE", str(ROOT / "tiers.yaml")),
            HOST="127.0.0.1",
            LOG_LEVEL="WARNING",
            CRM_RATE_LIMIT=str(self.o.crm_limit),
            CRM_RATE_WINDOW=f"{self.o.crm_window}s",
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        )
        env.update(extra)
        return env

    async def agent_key(self, env: dict[str, str]) -> str:
        proc = await spawn(
            sys.executable, "-m", "bot", "agents", "add", f"bench-{uuid.uuid4().hex[:6]}",
            env=env, cwd=str(self.workdir),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 120)
        except BaseException:  # interrupted or timed out: leave no child behind
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            raise BenchError(f"`python -m bot agents add` failed ({proc.returncode}): {err.decode().strip()}")
        return out.decode().strip().splitlines()[-1].strip()

    async def start_servers(self, name: str, env: dict[str, str]) -> list[Proc]:
        servers = []
        for n in range(self.o.replicas):
            port = free_port()
            proc = Proc(f"{name}-{n + 1}", [sys.executable, "-m", "bot", "serve"], {**env, "PORT": str(port)}, port, self.workdir)
            self.procs.append(proc)
            servers.append(proc)
        await asyncio.gather(*(p.start() for p in servers))
        return servers

    async def stop(self, servers: Sequence[Proc]) -> None:
        await asyncio.gather(*(p.stop() for p in servers))

    async def crm_quiet(self) -> None:
        """Before a gate on a fresh ledger (a fresh budget bucket) starts, let the stand-in's
        window drain to half, so the new bucket's burst cannot meet the old one's tail."""
        deadline = time.monotonic() + self.o.crm_window
        while time.monotonic() < deadline:
            now = time.monotonic()
            recent = sum(1 for c in self.hubspot.calls[-2 * self.o.crm_limit :] if c.at > now - self.o.crm_window)
            if recent <= self.o.crm_limit // 2:
                return
            await asyncio.sleep(0.2)

    def crm_calls(self) -> int:
        return len(self.hubspot.calls)

    async def drain(self, reader: LedgerReader, since: datetime, within: float) -> float:
        """Wait until every change created since `since` is settled and every review routed."""
        start = time.monotonic()
        while time.monotonic() - start < within:
            if await reader.unsettled_since(since) == 0:
                break
            await asyncio.sleep(0.2)
        return time.monotonic() - start

    # --- phases ------------------------------------------------------------------------------
    async def phase_bare(self) -> None:
        o = self.o
        progress(f"phase 1/5: bare aiohttp, closed loop with {o.agents} agents for {o.seconds:g}s")
        port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        bare = Proc("bare", [sys.executable, "-m", "bot.bench", "bare", "--port", str(port)], env, port, self.workdir)
        self.procs.append(bare)
        await bare.start()
        async with Load([bare.url], None, o.agents, o.deals) as load:
            result = await load.closed_loop(f"bare-{self.tag}", o.seconds, [bare.pid])
        await bare.stop()
        self.figures.bare = result
        progress(f"  bare: {result.throughput:,.0f} requests/s ({result.problems() or 'all 202'})")

    async def phase_unbatched(self) -> None:
        o, f = self.o, self.figures
        seconds = max(2.0, o.seconds / 2)
        progress(
            f"phase 2/5: batching off (COMMIT_BATCH_SIZE=1, COMMIT_LINGER=0, budget shares 1), {o.commit_rate:g}/s for {seconds:g}s"
        )
        url = await self.database("unbatched")
        env = self.env(
            url, COMMIT_BATCH_SIZE="1", COMMIT_LINGER="0", COMMIT_BUDGET_SHARE="1", REVIEW_BUDGET_SHARE="1"
        )
        key = await self.agent_key(env)
        servers = await self.start_servers("unbatched", env)
        reader = LedgerReader(url)
        self.readers.append(reader)
        committed0 = (await reader.status_counts())["committed"]
        calls0, limited0 = self.crm_calls(), self.hubspot.rate_limited
        async with Load([s.url for s in servers], key, o.agents, o.deals) as load:
            await load.open_loop(f"unbatched-{self.tag}", o.commit_rate, seconds, [s.pid for s in servers])
        await asyncio.sleep(1.0)
        calls1 = self.crm_calls()
        counts = await reader.status_counts()
        f.unbatched_calls = calls1 - calls0
        f.unbatched_committed = counts["committed"] - committed0
        f.unbatched_breakdown = crm_breakdown(self.hubspot.calls[calls0:calls1])
        f.failed_unbatched = await reader.failures()
        await self.stop(servers)
        f.rate_limited["unbatched"] = self.hubspot.rate_limited - limited0
        progress(
            f"  unbatched: {f.unbatched_calls} CRM calls for {f.unbatched_committed} committed changes "
            f"({fmt_num(ratio(f.unbatched_calls, f.unbatched_committed), 2)} per change)"
        )

    async def phase_main(self) -> None:
        o, f = self.o, self.figures
        await self.crm_quiet()
        url = await self.database("main")
        env = self.env(url)
        key = await self.agent_key(env)
        servers = await self.start_servers("gate", env)
        pids = [s.pid for s in servers]
        reader = LedgerReader(url)
        self.readers.append(reader)
        limited0 = self.hubspot.rate_limited
        async with Load([s.url for s in servers], key, o.agents, o.deals) as load:
            warm = min(2.0, max(1.0, o.seconds / 4))
            progress(f"  warm-up: {min(o.rate, 100):g}/s for {warm:g}s")
            f.warmup = await load.open_loop(f"warm-{self.tag}", min(o.rate, 100), warm, pids)
            # The run's peak concurrency before the baseline is taken: growth is then what the
            # run accumulates, not the first sight of 256 requests in flight. Refused proposals
            # go through all of intake and leave no CRM work to spill into the next phase.
            progress(f"  warm-up: {o.agents} agents in flight for {warm:g}s (read-only fields: refused)")
            await load.closed_loop(f"warm-sat-{self.tag}", warm, pids, mix="refused")
            await self.drain(reader, datetime(2000, 1, 1, tzinfo=UTC), 10)
            f.rss_warm = [proc_status(p)["VmRSS"] for p in pids]

            progress(f"phase 3/5: commit path, open loop at {o.commit_rate:g}/s for {o.seconds:g}s")
            committed0 = (await reader.status_counts())["committed"]
            calls0, slack0 = self.crm_calls(), self.slack.count("/api/")
            alerts0 = self._alert_posts()
            since = datetime.now(UTC)
            f.commit_load = await load.open_loop(f"commit-{self.tag}", o.commit_rate, o.seconds, pids)
            until = datetime.now(UTC)
            f.drain_seconds = await self.drain(reader, since, max(10.0, o.seconds))
            calls1 = self.crm_calls()
            f.batched_calls = calls1 - calls0
            f.batched_committed = (await reader.status_counts())["committed"] - committed0
            f.batched_breakdown = crm_breakdown(self.hubspot.calls[calls0:calls1])
            f.commit_delays, f.commit_statuses = await reader.commit_delays(since, until)
            f.slack_calls = self.slack.count("/api/") - slack0
            f.slack_alert_posts = self._alert_posts() - alerts0
            f.reviews, f.reviews_posted = await reader.reviews(since, until)
            progress(
                f"  commit path: p99 {fmt_ms(percentile(f.commit_delays, 99))} intake to committed, "
                f"{fmt_num(ratio(f.batched_calls, f.batched_committed), 3)} CRM calls per committed change"
            )

            f.rss_steps.append((f"{o.commit_rate:g}/s", [proc_status(p)["VmRSS"] for p in pids]))
            await self.rollback(load, reader, env, pids)
            if o.soak > 0:
                await self.soak(load, reader, pids)
            calls2, committed2 = self.crm_calls(), (await reader.status_counts())["committed"]
            sustained_from = time.monotonic()
            progress(f"phase 4/5: intake latency, open loop at {o.rate:g}/s for {o.seconds:g}s")
            f.fixed = await load.open_loop(f"fixed-{self.tag}", o.rate, o.seconds, pids)
            f.rss_steps.append((f"{o.rate:g}/s", [proc_status(p)["VmRSS"] for p in pids]))
            progress(
                f"  intake: p50 {fmt_ms(percentile(f.fixed.latencies, 50))}, "
                f"p99 {fmt_ms(percentile(f.fixed.latencies, 99))} ({f.fixed.problems() or 'all 202'})"
            )

            progress(f"phase 5/5: intake saturation, closed loop with {o.agents} agents for {o.seconds:g}s")
            f.saturation = await load.closed_loop(f"sat-{self.tag}", o.seconds, pids)
            progress(f"  saturation: {f.saturation.throughput:,.0f} proposals/s ({f.saturation.problems() or 'all 202'})")
        await asyncio.sleep(0.5)
        counts = await reader.status_counts()
        f.sustained_seconds = time.monotonic() - sustained_from
        f.sustained_calls = self.crm_calls() - calls2
        f.sustained_committed = counts["committed"] - committed2
        f.backlog_end = counts["queued"] + counts["committing"]
        f.rss_steps.append(("saturation", [proc_status(p)["VmRSS"] for p in pids]))
        for pid in pids:
            status = proc_status(pid)
            f.rss_end.append(status["VmRSS"])
            f.rss_peak.append(status["VmHWM"])
        f.failed = await reader.failures()
        await self.stop(servers)
        f.rate_limited["main"] = self.hubspot.rate_limited - limited0

    async def soak(self, load: Load, reader: LedgerReader, pids: Sequence[int]) -> None:
        """Steady load at the commit rate (what the CRM budget sustains, so no backlog builds)
        for --soak seconds, RSS read every step: growth over it is what time, not load, adds."""
        o, f = self.o, self.figures
        step = min(30.0, o.soak)
        progress(f"soak: {o.commit_rate:g}/s for {o.soak:g}s, RSS every {step:g}s")
        f.soak_rss.append((0.0, [proc_status(p)["VmRSS"] for p in pids]))
        done = 0.0
        while done < o.soak:
            seconds = min(step, o.soak - done)
            await load.open_loop(f"soak-{self.tag}-{int(done)}", o.commit_rate, seconds, pids)
            done += seconds
            f.soak_rss.append((done, [proc_status(p)["VmRSS"] for p in pids]))
            progress(f"  soak {done:g}s: RSS {', '.join(f'{kb / 1024:.0f} MB' for kb in f.soak_rss[-1][1])}")
        await self.drain(reader, datetime.now(UTC) - timedelta(seconds=step), 30)

    async def rollback(self, load: Load, reader: LedgerReader, env: dict[str, str], pids: Sequence[int]) -> None:
        """1,000 autonomous changes of one agent run, committed, then undone with the CLI:
        the compensating changes' CRM calls, counted at the stand-in."""
        f = self.figures
        tag = f"rollback-{self.tag}"
        progress(f"rollback: {ROLLBACK_CHANGES:,} changes of run bench-{tag}, then `python -m bot rollback run:bench-{tag} --yes`")
        since = datetime.now(UTC)
        await load.open_loop(tag, 250, ROLLBACK_CHANGES / 250, pids, mix="autonomous")
        await self.drain(reader, since, 60)
        calls0, started = self.crm_calls(), time.monotonic()
        proc = await spawn(
            sys.executable, "-m", "bot", "rollback", f"run:bench-{tag}", "--yes",
            env=env, cwd=str(self.workdir),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 300)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            raise BenchError(f"`python -m bot rollback` failed ({proc.returncode}): {(out + err).decode().strip()[-500:]}")
        f.rollback_seconds = time.monotonic() - started
        f.rollback_breakdown = crm_breakdown(self.hubspot.calls[calls0:])
        f.rollback_calls = self.crm_calls() - calls0
        summary = out.decode().strip().splitlines()[-1]
        f.rollback_reverted = int(summary.split(": ", 1)[1].split(" reverted", 1)[0])
        progress(f"  rollback: {f.rollback_reverted:,} reverted with {f.rollback_calls} CRM calls in {f.rollback_seconds:.1f}s")

    def _alert_posts(self) -> int:
        from bot.sandbox import seed

        return len(self.slack.messages(seed.ALERTS_CHANNEL))

    async def run(self) -> str:
        started = time.monotonic()
        try:
            progress(f"seeding {self.o.deals:,} deals; starting the HubSpot and Slack stand-ins")
            self.start_stand_ins()
            for phase in (self.phase_bare, self.phase_unbatched, self.phase_main):
                self.check()
                await phase()
            self.check()
        finally:
            await self.cleanup()
        self.figures.wall = time.monotonic() - started
        return self.table()

    # --- the table ---------------------------------------------------------------------------
    def table(self) -> str:
        o, f = self.o, self.figures
        assert f.bare and f.saturation and f.fixed and f.commit_load
        sat, bare, fixed = f.saturation, f.bare, f.fixed
        db = "SQLite" if o.db == "sqlite" else "PostgreSQL"
        replicas = f"{o.replicas} replica{'s' if o.replicas > 1 else ''}"
        gate_ratio = ratio(sat.throughput, bare.throughput)
        batched = ratio(f.batched_calls, f.batched_committed)
        unbatched = ratio(f.unbatched_calls, f.unbatched_committed)
        loads = [r for r in (f.warmup, f.commit_load, fixed, sat) if r is not None]
        sent = sum(r.sent for r in loads)
        not_ok = sum(r.not_ok for r in loads)
        problems = "; ".join(p for p in (r.problems() for r in loads) if p)
        limited_main = f.rate_limited.get("main", 0)
        limited_unbatched = f.rate_limited.get("unbatched", 0)
        by_429 = sum(1 for e in f.failed + f.failed_unbatched if "429" in e or "rate" in e.lower())
        committed_in_window = f.commit_statuses.get("committed", 0)
        queued_left = f.commit_statuses.get("queued", 0) + f.commit_statuses.get("committing", 0)
        peak_mb = [kb / 1024 for kb in f.rss_peak]
        growth = [ratio(end - warm, warm) * 100 for warm, end in zip(f.rss_warm, f.rss_end, strict=True)]
        breakdown = ", ".join(f"{n} {k}" for k, n in sorted(f.batched_breakdown.items()))
        unbreakdown = ", ".join(f"{n} {k}" for k, n in sorted(f.unbatched_breakdown.items()))
        field_changes = f.commit_statuses.get("committed field", 0)
        writes = f.batched_breakdown.get("batch update", 0)
        rows = [
            Row(
                "intake throughput, saturation",
                f"{fmt_num(sat.throughput)} proposals/s",
                ">= 1,000/s on SQLite",
                f"closed loop, {o.agents} in flight, {sat.ok:,} answered 202 in {sat.elapsed:.1f}s",
            ),
            Row(
                "bare aiohttp, same load",
                f"{fmt_num(bare.throughput)} requests/s",
                "",
                "parse the JSON, answer 202; one process",
            ),
            Row("gate / bare", fmt_num(gate_ratio, 2), ">= 0.25", f"{o.replicas} gate process(es) vs 1 bare process"),
            Row(
                "intake latency p50",
                fmt_ms(percentile(fixed.latencies, 50)),
                "",
                f"open loop at {o.rate:g}/s offered, {fixed.ok:,} answered, from the moment each was due; at "
                f"{o.commit_rate:g}/s: p50 {fmt_ms(percentile(f.commit_load.latencies, 50))}, "
                f"p99 {fmt_ms(percentile(f.commit_load.latencies, 99))}",
            ),
            Row(
                "intake latency p99",
                fmt_ms(percentile(fixed.latencies, 99)),
                "< 50 ms",
                f"at {o.rate:g}/s offered; max {fmt_ms(max(fixed.latencies, default=math.nan))}, client sent at most {fmt_ms(fixed.late)} late",
            ),
            Row("non-202 answers", f"{not_ok:,} of {sent:,}", "0", problems or "every proposal answered 202"),
            Row(
                "CPU at saturation, server / bench",
                " + ".join(f"{c * 100:.0f} %" for c in sat.server_cpu) + f" / {sat.client_cpu * 100:.0f} %",
                "",
                f"of one core; bare run: server {bare.server_cpu[0] * 100:.0f} %, bench {bare.client_cpu * 100:.0f} %; {os.cpu_count()} cores",
            ),
            Row(
                "CRM calls per committed change, batched",
                fmt_num(batched, 3),
                "<= 0.05",
                f"{f.batched_calls} calls / {f.batched_committed:,} committed at {o.commit_rate:g}/s ({breakdown}); "
                f"{ratio(field_changes, writes):.1f} changes per batch write; over the {o.rate:g}/s and saturation phases: "
                f"{fmt_num(ratio(f.sustained_calls, f.sustained_committed), 3)} ({f.sustained_calls} / {f.sustained_committed:,})",
            ),
            Row(
                "CRM calls per committed change, unbatched",
                fmt_num(unbatched, 3),
                "",
                f"COMMIT_BATCH_SIZE=1, COMMIT_LINGER=0, shares 1, restarted gate: {f.unbatched_calls} calls / "
                f"{f.unbatched_committed:,} committed ({unbreakdown})",
            ),
            Row(
                "commits while intake is loaded",
                f"{fmt_num(ratio(f.sustained_committed, f.sustained_seconds))} changes/s",
                "",
                f"committed during the {o.rate:g}/s and saturation phases ({f.sustained_committed:,} in "
                f"{f.sustained_seconds:.0f}s); {f.backlog_end:,} changes still queued at the end",
            ),
            Row(
                "intake to committed p50",
                fmt_ms(percentile(f.commit_delays, 50)),
                "",
                f"at {o.commit_rate:g}/s offered, CRM latency {o.crm_latency * 1000:.0f} ms, batches of up to 100",
            ),
            Row(
                "intake to committed p99",
                fmt_ms(percentile(f.commit_delays, 99)),
                "< 1 s",
                f"{committed_in_window:,} committed"
                + (f", {queued_left} still not committed after {f.drain_seconds:.0f}s" if queued_left else "")
                + f"; max {fmt_ms(max(f.commit_delays, default=math.nan))}",
            ),
            Row(
                "429s from the CRM stand-in",
                f"{limited_main + limited_unbatched}",
                "0",
                f"{limited_main} with batching, {limited_unbatched} without; stand-in limit {o.crm_limit} per {o.crm_window:g}s",
            ),
            Row(
                "changes failed",
                f"{len(f.failed) + len(f.failed_unbatched)}",
                "0 from 429s",
                f"{by_429} of them after a 429",
            ),
            Row(
                "Slack calls per reviewed proposal",
                fmt_num(ratio(f.slack_calls, f.reviews), 1),
                "",
                f"{f.slack_calls} Slack calls / {f.reviews} reviewed ({f.reviews_posted} posted); without the "
                f"{f.slack_alert_posts} alert-channel posts: {fmt_num(ratio(f.slack_calls - f.slack_alert_posts, f.reviews), 1)}",
            ),
            Row(
                "peak RSS per server process",
                ", ".join(f"{mb:.0f} MB" for mb in peak_mb),
                "< 150 MB",
                "VmHWM at the end",
            ),
            Row(
                "RSS growth after warm-up",
                ", ".join(f"{g:+.1f} %" for g in growth),
                "- (grows with the load; --soak: < 10 %)",
                "; ".join(
                    f"{w / 1024:.0f} MB after warm-up, "
                    + ", ".join(f"{kb[n] / 1024:.0f} after {name}" for name, kb in f.rss_steps)
                    for n, w in enumerate(f.rss_warm)
                ),
            ),
            *(
                [
                    Row(
                        "RSS growth over the soak",
                        ", ".join(
                            f"{ratio(end - start, start) * 100:+.1f} %"
                            for start, end in zip(f.soak_rss[0][1], f.soak_rss[-1][1], strict=True)
                        ),
                        "< 10 % over 5 minutes",
                        f"{o.commit_rate:g}/s for {o.soak:g}s after the commit phase: "
                        + "; ".join(
                            " -> ".join(f"{kb[n] / 1024:.0f}" for _, kb in f.soak_rss) + " MB"
                            for n in range(len(f.soak_rss[0][1]))
                        )
                        + f" (every {min(30.0, o.soak):g}s)",
                    )
                ]
                if f.soak_rss
                else []
            ),
            Row(
                "rollback of 1,000 changes",
                f"{f.rollback_calls} CRM calls",
                "<= 25",
                f"`python -m bot rollback run:... --yes` while the gate runs: {f.rollback_reverted:,} reverted in "
                f"{f.rollback_seconds:.1f}s ({', '.join(f'{n} {k}' for k, n in f.rollback_breakdown.most_common())})",
            ),
            Row("total wall time", f"{f.wall:.0f} s", "< 180 s with the defaults", f"phases of {o.seconds:g}s"),
        ]
        from bot.loop import loop_factory

        loop_name = "uvloop" if loop_factory(os.environ.get("EVENT_LOOP", "auto").lower()) else "asyncio"
        title = (
            f"crm-gate bench: {db}, {replicas}, {loop_name} loop, {o.agents} agents, CRM latency {o.crm_latency * 1000:.0f} ms, "
            f"CRM limit {o.crm_limit} per {o.crm_window:g}s, {o.deals:,} deals; mix {MIX}"
        )
        return render_table(rows, title)


# --- PostgreSQL -----------------------------------------------------------------------------------


async def create_pg_database(name: str) -> None:
    import asyncpg

    try:
        conn = await asyncio.wait_for(asyncpg.connect(PG_ADMIN_URL), 10)
    except Exception as exc:
        raise BenchError(f"no PostgreSQL at {PG_ADMIN_URL} ({type(exc).__name__}: {exc})") from None
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_pg_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# --- entry points ---------------------------------------------------------------------------------


def options_from(args: argparse.Namespace) -> Options:
    defaults = Options()
    return Options(**{name: getattr(args, name, getattr(defaults, name)) for name in defaults.__dataclass_fields__})


def run_bench(args: argparse.Namespace) -> int:
    """`python -m bot bench`: run every phase, print the table; 0 when it ran to the end."""
    options = options_from(args)
    if options.seconds <= 0 or options.rate <= 0 or options.agents < 1 or options.commit_rate <= 0:
        print("error: --seconds, --rate, --commit-rate and --agents must be positive", file=sys.stderr)
        return 2

    async def main() -> str:
        bench = Bench(options)
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def interrupt() -> None:
            if bench.interrupted:
                return  # a second Ctrl-C must not cut the clean-up short
            bench.interrupted = True
            if task is not None:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        return await bench.run()

    try:
        table = asyncio.run(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError, Interrupted):
        print("interrupted; every subprocess and stand-in stopped", file=sys.stderr)
        return 130
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["bare"]:
        sys.exit(bare_main(sys.argv[2:]))
    print("usage: python -m bot.bench bare --port N (the bench itself: python -m bot bench)", file=sys.stderr)
    sys.exit(2)
