"""What an audit trail or tracing costs a turn: the same turn with no listener, a JSONLAuditLog, an OTelListener.

    python benchmarks/audit.py            # about a minute on 2 cores
    python benchmarks/audit.py --quick    # a smoke run

Every row runs the same convo turn against the fake Messages API server
(benchmarks/server.py, a separate process), in interleaved rounds so that
drift on the machine hits every row alike:

- *plain turn*: ``send_user_text_message`` on a new convo (2 listener events);
- *tool turn*: ``run`` of a turn where the model asks for 8 calls of an
  instant tool, then answers (2 requests, 20 listener events).

Rows: no listener (the peer); ``JSONLAuditLog(fsync=False)`` on a local
file; the same with ``fsync=True`` (each line on the disk before the turn
goes on); ``OTelListener`` on the OpenTelemetry SDK (a batch span processor
with an exporter that drops what it is given, and an in-memory metric
reader: the SDK's own costs, none of a network's); both at once. The
overhead is each row's median over the no-listener median. Results go to
benchmarks/results/audit-<timestamp>.json and audit-latest.json.

Two figures per row: the wall time of a turn (what a caller waits), and
the process's CPU time per turn, all threads included (what the listener
costs the machine; the OpenTelemetry SDK's batch exporter thread included).
On a busy machine the CPU figure is the steadier of the two.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from run import (  # noqa: E402  (benchmarks/run.py: the server process, timing and clients)
    PROMPT,
    RESULTS,
    ServerProcess,
    convo_service,
    meta,
    new_convo,
    quiet_logs,
    summary,
)

TOOLS_PROMPT = "TOOLS:8 Look up all eight things at once."


def lookup(i: int) -> str:
    """Look up thing number i (instantly)."""
    return f"thing {i} is fine"


def otel_listener():
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    from convo.otel import OTelListener

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return OTelListener(tracer_provider, meter_provider), (tracer_provider, meter_provider)


def measure(rows: dict, *, rounds: int, per_round: int, warmup: int) -> dict:
    """Per row: turn wall times, and CPU seconds per turn for each round; rows take turns round by round."""
    for make_turn in rows.values():
        for _ in range(warmup):
            make_turn()()
    wall: dict[str, list[float]] = {name: [] for name in rows}
    cpu: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, make_turn in rows.items():
            gc.collect()
            turns = [make_turn() for _ in range(per_round)]
            c0 = time.process_time()
            for turn in turns:
                t0 = time.perf_counter()
                turn()
                wall[name].append(time.perf_counter() - t0)
            cpu[name].append((time.process_time() - c0) / per_round)
    return {name: {**summary(wall[name]), "cpu_per_turn": summary(cpu[name])["median"]} for name in rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, not figures)")
    parser.add_argument("--no-save", action="store_true", help="print only, write no results file")
    args = parser.parse_args(argv)
    quiet_logs()
    from convo import combine_listeners
    from convo.audit import JSONLAuditLog, verify
    from convo.tools import tool

    folder = Path(tempfile.mkdtemp(prefix="convo-audit-bench-"))
    jsonl = JSONLAuditLog(folder / "audit.jsonl")
    otel, providers = otel_listener()
    both = combine_listeners(JSONLAuditLog(folder / "both.jsonl"), otel_listener()[0])
    durable = JSONLAuditLog(folder / "fsync.jsonl", fsync=True)
    listeners = {"no listener": None, "JSONLAuditLog (fsync=False)": jsonl, "JSONLAuditLog (fsync=True)": durable,
                 "OTelListener (SDK)": otel, "JSONL + OTel": both}
    instant = tool(lookup)
    rounds, per_round, warmup = (4, 10, 5) if args.quick else (20, 25, 30)
    results: dict = {"meta": meta(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    started = time.perf_counter()
    with ServerProcess() as server:
        service = convo_service(server.url)
        def plain(listener):
            c = new_convo(service, listener=listener)
            return lambda: c.send_user_text_message(PROMPT)

        def tools(listener):
            c = new_convo(service, listener=listener, tools=[instant])
            return lambda: c.run(TOOLS_PROMPT)

        for case, make_turn in {"plain turn": plain, "tool turn (8 tools)": tools}.items():
            print(f"[{case}] ...", file=sys.stderr, flush=True)
            rows = {name: (lambda listener=listener, make_turn=make_turn: make_turn(listener))
                    for name, listener in listeners.items()}
            results[case] = measure(rows, rounds=rounds, per_round=per_round, warmup=warmup)
        service.close()
    jsonl.close()
    durable.close()
    for provider in providers:
        provider.shutdown()
    report = verify(folder / "audit.jsonl")
    results["audit_log"] = {"records": report.records, "chain_intact": report.ok,
                            "bytes": (folder / "audit.jsonl").stat().st_size}
    results["seconds"] = time.perf_counter() - started

    print(f"\nThe cost of a listener on one turn (median of {rounds * per_round} turns per row, "
          "interleaved; fake Messages API server in its own process)\n")
    for case in ("plain turn", "tool turn (8 tools)"):
        rows = results[case]
        base = rows["no listener"]["median"]
        print(f"{case}:")
        base_cpu = rows["no listener"]["cpu_per_turn"]
        print(f"  {'listener':<30} {'wall median':>12} {'p10..p90':>20} {'overhead':>9}   {'CPU/turn':>9} "
              f"{'overhead':>9}")
        for name, r in rows.items():
            extra, extra_cpu = r["median"] - base, r["cpu_per_turn"] - base_cpu
            peer = name == "no listener"
            print(f"  {name:<30} {r['median'] * 1e3:>10.3f}ms {r['p10'] * 1e3:>8.3f}..{r['p90'] * 1e3:<8.3f}ms"
                  f" {'peer' if peer else f'{extra / base * 100:+.1f}%':>9}   {r['cpu_per_turn'] * 1e3:>7.3f}ms"
                  f" {'peer' if peer else f'{extra_cpu / base_cpu * 100:+.1f}%':>9}"
                  + ("" if peer else f"  ({extra * 1e6:+.0f} us wall, {extra_cpu * 1e6:+.0f} us CPU)"))
        print()
    a = results["audit_log"]
    print(f"The JSONL log written meanwhile: {a['records']} records, {a['bytes'] / a['records']:.0f} bytes each, "
          f"chain {'intact' if a['chain_intact'] else 'BROKEN'}. Total {results['seconds']:.0f} s.")
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        payload = json.dumps(results, indent=2)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        (RESULTS / f"audit-{stamp}.json").write_text(payload)
        (RESULTS / "audit-latest.json").write_text(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
