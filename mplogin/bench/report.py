"""The printed report: a line per step while running, the summary at the end."""

from __future__ import annotations

import sys

from mplogin.bench.common import Json


def _first(run: Json | None) -> Json | None:
    if not run or not run["closed"]:
        return None
    first: Json = run["closed"][0]
    return first


def ratios(out: Json) -> Json:
    """b/a and b/c at 0 ms, medians at one in flight, and the pipeline's added latency."""
    runs = out["runs"]
    a, b0, c0 = runs.get("a_echo"), runs.get("b_pipeline_0ms"), runs.get("c_inline_0ms")
    result: Json = {
        "b_over_a": round(b0["best"]["throughput"] / a["best"]["throughput"], 3)
        if a and b0 and a["best"]["throughput"] else None,
        "b_over_c": round(b0["best"]["throughput"] / c0["best"]["throughput"], 3)
        if b0 and c0 and c0["best"]["throughput"] else None,
        "median_ms_at_one_in_flight": {},
    }
    for name, run in runs.items():
        first = _first(run)
        if first is not None and first["concurrency"] == 1:
            result["median_ms_at_one_in_flight"][name] = first["p50_ms"]
    added: dict[str, Json] = {}
    for name, run in runs.items():
        first = _first(run)
        if not name.startswith("b_pipeline_") or first is None or first["concurrency"] != 1:
            continue
        ms = run["platform_latency_ms"]
        # The platform's own latency is measured (a direct call to the sandbox with the same
        # added latency), since the sandbox itself takes a little longer than the delay.
        own = out.get("platform_own_p50_ms", {}).get(str(ms))
        if own is not None:
            added[str(ms)] = {"platform_latency_ms": ms, "platform_own_p50_ms": own,
                              "added_p50_ms": round(first["p50_ms"] - own, 2)}
    if added:
        result["pipeline_added_ms_over_platform"] = added
    paced_run = (a or {}).get("paced")
    first_a = _first(a)
    if paced_run and first_a is not None and first_a["concurrency"] == 1:
        result["echo_round_trip_p50_ms"] = {
            "back_to_back": first_a["p50_ms"],
            f"after_{paced_run['pause_ms']}ms_idle": paced_run["p50_ms"]}
    db = out.get("db", {}).get("inline_commands")
    if db and db.get("logins"):
        result["db_round_trips_per_login"] = round(db["commands_total"] / db["logins"], 3)
    per_step = cpu_ratios(runs)
    if per_step:
        result["cpu_per_login_vs_inline"] = per_step
    return result


def _cpu_ms_per_ok(step: Json, prefix: str) -> float | None:
    """CPU ms per successful request of the processes named ``prefix...`` in one step."""
    cpu = [float(v) for k, v in step.get("cpu_s", {}).items() if k.startswith(prefix)]
    ok = int(step.get("ok") or 0)
    if not cpu or not ok:
        return None
    return 1000 * sum(cpu) / ok


def cpu_ratios(runs: Json) -> list[Json]:
    """Per closed-loop step: the gateway's and the workers' CPU per login, each as a ratio to
    the inline server's CPU per login at the same concurrency and platform latency of the same
    run, and b/c (that step's throughputs)."""
    rows: list[Json] = []
    for name, run in runs.items():
        if not name.startswith("b_pipeline_"):
            continue
        inline = runs.get("c_inline_" + name.removeprefix("b_pipeline_"))
        if not inline:
            continue
        by_conc = {s["concurrency"]: s for s in inline["closed"]}
        for b in run["closed"]:
            c = by_conc.get(b["concurrency"])
            if c is None:
                continue
            inl = _cpu_ms_per_ok(c, "inline")
            gw, wk = _cpu_ms_per_ok(b, "gateway"), _cpu_ms_per_ok(b, "worker")
            if not inl or gw is None or wk is None:
                continue
            rows.append({
                "platform_latency_ms": run["platform_latency_ms"],
                "concurrency": b["concurrency"],
                "inline_ms": round(inl, 3), "gateway_ms": round(gw, 3), "worker_ms": round(wk, 3),
                "gateway_x": round(gw / inl, 3), "worker_x": round(wk / inl, 3),
                "b_over_c": round(b["throughput"] / c["throughput"], 3)
                if c["throughput"] else None,
            })
    return rows


TARGETS = {"gateway_x": 0.37, "worker_x": 0.87, "b_over_c": 0.75, "added_ms": 3.5}


def report(text: str) -> None:
    """Write the bench's report output (its purpose) to stdout."""
    sys.stdout.write(text)
    sys.stdout.flush()


def report_header() -> None:
    """The column titles of the per-step lines."""
    report(f"\n{'run':<18} {'mode':<6} {'load':>10} {'ok/s':>8} {'p50':>8} {'p95':>8} "
           f"{'p99':>8} {'errors':>8} {'gen CPU':>8}\n")


def report_step(name: str, latency_ms: int, r: Json) -> None:
    """One line per measured step."""
    load = {"closed": f"c={r.get('concurrency')}", "open": f"{r.get('rate', 0):.0f}/s",
            "paced": f"1+{r.get('pause_ms')}ms"}[r["mode"]]
    errors = sum(r["errors"].values())
    err = str(errors) if not errors else ",".join(f"{k}:{v}" for k, v in r["errors"].items())
    gen = r.get("cpu_pct", {}).get("bench (load generator)", 0.0)
    flag = " codes ran out" if r.get("codes_exhausted") else ""
    if r["mode"] == "open":
        flag += f"  sender lag p99 {r['sender_lag_p99_ms']:.1f}ms"
    report(f"{name:<18} {r['mode']:<6} {load:>10} {r['throughput']:>8.1f} {r['p50_ms']:>6.2f}ms "
           f"{r['p95_ms']:>6.2f}ms {r['p99_ms']:>6.2f}ms {err:>8} {gen:>7.0f}%{flag}\n")


def final_report(out: Json) -> str:
    """The summary after the steps: ratios, DB round trips, CPU per process and per login."""
    m, r, runs = out["machine"], out["ratios"], out["runs"]
    lines = [
        "",
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), RabbitMQ {m['rabbitmq_version']}, "
        f"Python {m['python_version']}, load {m['loadavg_start'][0]:.2f} -> "
        f"{m['loadavg_end'][0]:.2f}; wall {out['wall_s']} s",
        "best closed-loop throughput per run:",
    ]
    for name, run in runs.items():
        best = run["best"]
        lines.append(f"  {name:<18} {best['throughput']:>8.1f}/s at c={best['concurrency']:<4} "
                     f"p50 {best['p50_ms']:.2f} ms; errors {run['errors_total']}")
    lines.append(f"b/a throughput (0 ms platform, best concurrency): {r['b_over_a']}")
    lines.append(f"b/c throughput (0 ms platform, best concurrency): {r['b_over_c']}")
    medians = ", ".join(f"{k} {v:.2f} ms" for k, v in r["median_ms_at_one_in_flight"].items())
    lines.append(f"median latency at 1 in flight: {medians}")
    for added in (r.get("pipeline_added_ms_over_platform") or {}).values():
        lines.append(f"pipeline's median added latency over a {added['platform_latency_ms']} ms "
                     f"platform (measured alone: {added['platform_own_p50_ms']} ms p50) at 1 in "
                     f"flight: {added['added_p50_ms']:.2f} ms")
    rows = r.get("cpu_per_login_vs_inline") or []
    if rows:
        lines.append("CPU per login against the inline server's, per closed-loop step (same run; "
                     f"targets at 0 ms, c=50: gateway <= {TARGETS['gateway_x']}x, worker <= "
                     f"{TARGETS['worker_x']}x, b/c >= {TARGETS['b_over_c']}):")
        lines.append(f"  {'step':<24}{'inline':>9}{'gateway':>9}{'worker':>9}"
                     f"{'gw/inl':>8}{'wk/inl':>8}{'b/c':>7}")
    for row in rows:
        step = f"{row['platform_latency_ms']} ms, c={row['concurrency']}"
        lines.append(f"  {step:<24}{row['inline_ms']:>7.2f}ms{row['gateway_ms']:>7.2f}ms"
                     f"{row['worker_ms']:>7.2f}ms{row['gateway_x']:>8.2f}{row['worker_x']:>8.2f}"
                     f"{row['b_over_c'] or 0:>7.2f}")
    echo = r.get("echo_round_trip_p50_ms")
    if echo:
        idle = next(k for k in echo if k.startswith("after_"))
        lines.append(f"bare RPC round trip at 1 in flight, p50: {echo['back_to_back']:.2f} ms back "
                     f"to back, {echo[idle]:.2f} ms {idle.replace('_', ' ')} (a cold hop's cost "
                     "on this machine)")
    split = [(name, first["stages_ms"]) for name, run in runs.items()
             if (first := _first(run)) is not None and first.get("stages_ms")]
    if split:
        lines.append("where a pipeline login's time goes at 1 in flight (means, from the gateway's "
                     "and the worker's own histograms):")
    for name, st in split:
        lines.append(
            f"  {name:<18} {st['client_ms']:.2f} ms = HTTP and client "
            f"{st['http_and_client_ms']:.2f} + queue hops {st['queue_ms']:.2f} + worker "
            f"{st['worker_ms']:.2f} (platform "
            f"{st['platform_ms']:.2f}, database {st['db_ms']:.2f}, own work "
            f"{st['worker_own_ms']:.2f})")
    db = out.get("db")
    if db:
        cmds = db["inline_commands"]
        by_name = ", ".join(f"{k} {v}" for k, v in sorted(cmds["commands"].items()))
        lines.append(f"DB round trips per steady-state login: {r.get('db_round_trips_per_login')} "
                     f"({cmds['commands_total']} commands over {cmds['logins']} logins: "
                     f"{by_name})")
        background = cmds.get("background_commands") or {}
        if background:
            lines.append("  besides, the worker's background tasks (outbox relay, blocked users' "
                         "reload, erasure notice polls, retention purge) sent "
                         f"{sum(background.values())} commands in the same time "
                         f"({', '.join(f'{k} {v}' for k, v in sorted(background.items()))}), "
                         "whatever the login rate")
        ceil = db["ceiling"]
        for key in ("login_shaped", "upsert_only"):
            s = ceil[key]
            what = "2-command login sequences" if key == "login_shaped" else "find_one_and_update"
            lines.append(
                f"DB alone, {what} at c=50: {s['throughput']:.0f}/s (p50 {s['p50_ms']:.2f} ms); "
                f"stand-in CPU {s['cpu_pct'].get('stand-in (nx-27017)', 0):.0f}%, "
                f"bench client CPU {s['cpu_pct'].get('bench (load generator)', 0):.0f}%")
    procs = sorted({p for run in runs.values() for p in run["cpu_ms_per_op"]})
    cpus = m["cpus_usable"] or 1
    lines.append("CPU ms per successful request, by process (all steps of the run), and the "
                 f"rate at which that would use all {cpus} CPUs:")
    lines.append("  " + f"{'run':<18}" + "".join(f"{_short(p):>10}" for p in procs)
                 + f"{'total':>10}{'CPU-bound':>11}")
    for name, run in runs.items():
        cells = "".join(f"{run['cpu_ms_per_op'].get(p) or 0:>10.2f}" for p in procs)
        total = run["cpu_ms_per_op_total"] or 0.0
        local = out["options"]["target"] is None  # with --target, the stack is not accounted
        bound = f"{cpus * 1000 / total:>9.0f}/s" if total and local else f"{'-':>11}"
        lines.append(f"  {name:<18}{cells}{total:>10.2f}{bound}")
    busy = [f"{name} {s.get('concurrency') or s.get('rate')}" for name, run in runs.items()
            for s in run["closed"] + run["open"]
            if s["cpu_pct"].get("bench (load generator)", 0) > 85]
    if busy:
        lines.append("the load generator used more than 85% of a core in: " + ", ".join(busy))
    else:
        lines.append("the load generator stayed below 85% of a core in every step")
    lines.append("processes (whole run): CPU seconds, peak RSS")
    for name, row in out["processes"].items():
        cpu = row["cpu_s"]
        lines.append(f"  {name:<26} {cpu if cpu is not None else float('nan'):>8.2f} s "
                     f"{row['peak_rss_mb']:>8.1f} MiB")
    codes = out.get("codes", {})
    lines.append(f"codes minted ahead of the steps: {codes.get('minted')} in "
                 f"{codes.get('mint_seconds')} s (not measured)")
    return "\n".join(lines) + "\n"


def _short(name: str) -> str:
    return name.split(" ")[0][:10]
