"""Turning results into something to read: ratios to the best baseline, a terminal table,
JSON, a PNG per subcommand and Markdown for BENCHMARKS.md.

Pure Python + matplotlib (no torch, no mpt_ext), so that scripts/make-benchmarks-md can
load it without a built extension."""
from __future__ import annotations

import json
from collections import OrderedDict
from typing import Optional

# The measured ceiling each throughput metric is compared with (docs/DESIGN.md's two floors).
_CEILING_FOR_METRIC = {"TFLOP/s": "matmul_tflops", "GB/s": "copy_gbps"}


def annotate(rows: list[dict], ceilings: dict) -> None:
    """Adds best_baseline, vs_best_baseline and of_ceiling to each row, in place. Every
    metric is a throughput, so higher is better; ceilings (no-ALiBi references) and ours are
    never the best baseline."""
    best: dict[str, tuple[str, float]] = {}
    for r in rows:
        if r["kind"] == "baseline" and r["status"] == "ok" and r.get("value"):
            if r["key"] not in best or r["value"] > best[r["key"]][1]:
                best[r["key"]] = (r["impl"], r["value"])
    reliable = {(r["key"], r["impl"]): _reliable(r) for r in rows}
    for r in rows:
        b = best.get(r["key"])
        r["best_baseline"] = b[0] if b else None
        r["vs_best_baseline"] = (round(r["value"] / b[1], 3)
                                 if b and r["status"] == "ok" and r.get("value") else None)
        # A ratio is as reliable as the less reliable of its two timings.
        r["vs_best_reliable"] = (reliable[(r["key"], r["impl"])]
                                 and reliable[(r["key"], b[0])]
                                 if r["vs_best_baseline"] is not None else None)
        ceiling = ceilings.get(_CEILING_FOR_METRIC.get(r["metric"], ""), None)
        r["of_ceiling"] = (round(r["value"] / ceiling, 3)
                           if ceiling and r["status"] == "ok" and r.get("value") else None)


def _reliable(r: dict) -> bool:
    """Rows from before the reliability flags count as reliable; the report says when a CPU
    run recorded no thread setting."""
    return r["status"] == "ok" and r.get("reliable", True) and not r.get("flags")


UNRELIABLE_MARK = "?"
UNRELIABLE_NOTE = ("?: unreliable (a wide spread, or a CPU that other processes took while it "
                   "was timed); the row's flags say why")


def threads_line(rep: dict) -> Optional[str]:
    """How the run set its CPU threads, or None for reports from before it did."""
    t = rep.get("threads")
    if not t:
        return None
    loads = [f"{t[k]:.2f} at {k.split('_')[-1]}" for k in ("load_at_start", "load_at_end")
             if t.get(k) is not None]
    return (f"threads: {t.get('intra_op')} intra-op for every implementation "
            f"({t.get('chosen_by')}); "
            f"{'interleaved rounds' if t.get('interleaved') else 'timed one at a time'}; "
            f"{t.get('cores')} cores, 1-min load {', '.join(loads) or 'unknown'}")


def fmt_ratio(r: dict) -> str:
    v = r.get("vs_best_baseline")
    if not v:
        return "-"
    return f"{v:.2f}x" + (UNRELIABLE_MARK if r.get("vs_best_reliable") is False else "")


def fmt_num(v: Optional[float]) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _header(rep: dict) -> list[str]:
    env, c = rep.get("env", {}), rep.get("ceilings", {})
    card = env.get("gpu") or f"CPU ({env.get('cpu')}, {env.get('torch_threads')} threads)"
    commit = (env.get("commit") or "no git")[:10] + ("+dirty" if env.get("dirty") else "")
    lines = [f"== {rep['suite']} | {rep.get('dtype')} | {card} | torch {env.get('torch')} | "
             f"CUDA {env.get('cuda')} | mpt_ext {commit} | {env.get('date_utc')} UTC",
             f"   ceilings: copy {fmt_num(c.get('copy_gbps'))} GB/s ({c.get('copy_what')}), "
             f"matmul {fmt_num(c.get('matmul_tflops'))} TFLOP/s ({c.get('matmul_what')})"]
    tl = threads_line(rep)
    if tl:
        lines.append(f"   {tl}")
    if rep.get("cpu_fallback"):
        lines.append("   NO CUDA GPU: CPU paths at small sizes; says nothing about GPU speed.")
        if not tl:
            lines.append("   NO THREAD SETTING RECORDED (older mpt-bench): CPU ratios unreliable.")
    if any(r.get("vs_best_reliable") is False for r in rep.get("rows", [])):
        lines.append(f"   {UNRELIABLE_NOTE}")
    lines += [f"   note: {n}" for n in rep.get("notes", [])]
    return lines


def _extra_text(extra: dict) -> str:
    return " ".join(f"{k}={fmt_num(v) if isinstance(v, (int, float)) else v}"
                    for k, v in extra.items())


def format_table(rep: dict) -> str:
    """A long-form table: one line per (problem, impl), the problem named once per group;
    a failed case shows its status in place of the numbers."""
    metric = next((r["metric"] for r in rep["rows"]), "")
    head = ["problem", "impl", "ms", "IQR %", "p10-p90 %", metric, "x best", "% ceil",
            "peak GiB"]
    lines: list[tuple[list[str], Optional[str], str]] = []  # (cells, status, extra)
    last_key = None
    for r in rep["rows"]:
        key = r["key"] if r["key"] != last_key else ""
        last_key = r["key"]
        if r["status"] != "ok":
            lines.append(([key, r["impl"]], r["status"][:100], ""))
            continue
        extra = _extra_text(r.get("extra") or {})
        if r.get("flags"):
            extra = ("UNRELIABLE: " + "; ".join(r["flags"]) + (" | " + extra if extra else ""))
        lines.append(([
            key, r["impl"], fmt_num(r.get("median_ms")),
            f"{100 * r['iqr']:.1f}" if r.get("iqr") is not None else "-",
            f"{100 * r['spread']:.1f}" if r.get("spread") is not None else "-",
            fmt_num(r.get("value")) + (UNRELIABLE_MARK if not _reliable(r) else ""),
            fmt_ratio(r),
            f"{100 * r['of_ceiling']:.0f}%" if r.get("of_ceiling") else "-",
            fmt_num(r.get("peak_gib")),
        ], None, extra))
    widths = [len(h) for h in head]
    for cells, _, _ in lines:
        for i, c in enumerate(cells):
            widths[i] = max(widths[i], len(c))

    def render(cells: list[str], status: Optional[str], extra: str) -> str:
        parts = [f"{cells[0]:<{widths[0]}}", f"{cells[1]:<{widths[1]}}"]
        if status is not None:
            parts.append(status)
        else:
            parts += [f"{c:>{w}}" for c, w in zip(cells[2:], widths[2:])]
            parts.append(extra)
        return "  ".join(parts).rstrip()
    out = _header(rep) + ["", render(head, None, "")]
    out += [render(*ln) for ln in lines]
    return "\n".join(out)


def write_json(rep: dict, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(rep, fh, indent=1, default=str)
        fh.write("\n")


# ---- plots ---------------------------------------------------------------------------------


def _panels(rep: dict) -> "OrderedDict[tuple, list[dict]]":
    spec = rep["plot"]
    panels: "OrderedDict[tuple, list[dict]]" = OrderedDict()
    for r in rep["rows"]:
        if r["status"] != "ok" or r.get("value") is None:
            continue
        pk = tuple(r["params"].get(p) for p in spec.get("panels", []))
        panels.setdefault(pk, []).append(r)
    return panels


def _panel_title(spec: dict, key: tuple) -> str:
    return "  ".join(f"{p}={v}" if p != "pass" else str(v)
                     for p, v in zip(spec.get("panels", []), key))


def plot(rep: dict, path: str) -> None:
    """One PNG per subcommand: line panels (throughput vs a size) or grouped bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = rep["plot"]
    panels = _panels(rep)
    n = max(1, len(panels))
    cols = min(n, spec.get("cols", 2))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows), squeeze=False)
    metric = next((r["metric"] for r in rep["rows"]), "")
    ceiling = rep.get("ceilings", {}).get(_CEILING_FOR_METRIC.get(metric, ""), None)
    # One colour per implementation across every panel.
    palette = plt.get_cmap("tab10").colors
    impls = list(OrderedDict.fromkeys(r["impl"] for r in rep["rows"]))
    colors = {name: palette[i % len(palette)] for i, name in enumerate(impls)}
    for ax, (pk, prs) in zip(axes.flat, panels.items()):
        if spec.get("kind") == "bars":
            _bars(ax, prs, colors)
        else:
            _lines(ax, prs, spec, ceiling, colors)
        ax.set_title(_panel_title(spec, pk), fontsize=10)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if not panels:
        axes.flat[0].text(0.5, 0.5, "no successful cases", ha="center", va="center")
    env = rep.get("env", {})
    t = rep.get("threads") or {}
    card = env.get("gpu") or (f"CPU, {t['intra_op']} thread(s), small sizes" if t
                              else "CPU (no thread setting recorded), small sizes")
    title = f"mpt-bench {rep['suite']} | {rep.get('dtype')} | {card} | {env.get('date_utc')}"
    if any(not _reliable(r) for rs in panels.values() for r in rs):
        title += ("\nhollow grey points / hatched bars: unreliable (wide spread or a "
                  "contended CPU; see the table's flags)")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _style(kind: str) -> dict:
    if kind == "ours":
        return {"linewidth": 2.6, "marker": "o", "zorder": 3}
    if kind == "ceiling":
        return {"linewidth": 1.2, "linestyle": "--", "marker": "."}
    return {"linewidth": 1.4, "marker": "."}


def _size_label(n) -> str:
    if isinstance(n, int) and n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)


def _lines(ax, prs: list[dict], spec: dict, ceiling: Optional[float], colors: dict) -> None:
    series: "OrderedDict[str, list[dict]]" = OrderedDict()
    for r in prs:
        series.setdefault(r["impl"], []).append(r)
    for impl, rs in series.items():
        rs = sorted(rs, key=lambda r: r["params"][spec["x"]])
        ax.plot([r["params"][spec["x"]] for r in rs], [r["value"] for r in rs], label=impl,
                color=colors.get(impl), **_style(rs[0]["kind"]))
        bad = [r for r in rs if not _reliable(r)]
        if bad:  # drawn over the line's own marker: hollow and grey
            ax.scatter([r["params"][spec["x"]] for r in bad], [r["value"] for r in bad],
                       s=60, facecolors="white", edgecolors="gray", linewidths=1.5, zorder=4)
    if ceiling:
        ax.axhline(ceiling, color="gray", linestyle=":", linewidth=1,
                   label=f"measured ceiling {fmt_num(ceiling)}")
    if spec.get("logx"):
        ax.set_xscale("log", base=2)
    xs = sorted({r["params"][spec["x"]] for r in prs})
    ax.set_xticks(xs)
    ax.set_xticklabels([_size_label(x) for x in xs], fontsize=8)
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel(spec.get("xlabel", spec["x"]))
    ax.legend(fontsize=7)


def _bars(ax, prs: list[dict], colors: dict) -> None:
    keys = list(OrderedDict.fromkeys(r["key"] for r in prs))
    impls = list(OrderedDict.fromkeys(r["impl"] for r in prs))
    width = 0.8 / max(1, len(impls))
    for j, impl in enumerate(impls):
        xs, ys, bad = [], [], []
        for i, k in enumerate(keys):
            for r in prs:
                if r["key"] == k and r["impl"] == impl:
                    xs.append(i + j * width)
                    ys.append(r["value"])
                    bad.append(not _reliable(r))
        bars = ax.bar(xs, ys, width=width, label=impl, color=colors.get(impl))
        for b, unreliable in zip(bars, bad):
            if unreliable:
                b.set_alpha(0.35)
                b.set_hatch("//")
                b.set_edgecolor("gray")
    ax.set_xticks([i + width * (len(impls) - 1) / 2 for i in range(len(keys))])
    ax.set_xticklabels(keys, fontsize=7, rotation=15)
    ax.legend(fontsize=7)


# ---- Markdown ------------------------------------------------------------------------------


def _cell(r: Optional[dict], field: str = "value") -> str:
    if r is None:
        return ""
    s = r["status"]
    if s == "ok":
        if r.get(field) is None:
            return "-"
        return fmt_num(r.get(field)) + (UNRELIABLE_MARK if field == "value"
                                        and not _reliable(r) else "")
    if s == "OOM" or s == "not built":
        return s
    if s.startswith(("skipped", "unavailable")):
        return "-"
    return "error"


def _pivot(by_key: "OrderedDict[str, dict]", impls: list[str], field: str,
           ratio: bool) -> list[str]:
    out = ["| problem | " + " | ".join(impls) + (" | ours / best baseline |" if ratio else " |"),
           "|---" * (len(impls) + 1 + ratio) + "|"]
    for key, cells in by_key.items():
        line = f"| {key} | " + " | ".join(_cell(cells.get(i), field) for i in impls) + " |"
        if ratio:
            ours = next((r for r in cells.values() if r["kind"] == "ours"), None)
            line += (f" {fmt_ratio(ours)} |"
                     if ours is not None and ours.get("vs_best_baseline") else "  |")
        out.append(line)
    return out


def markdown(rep: dict, png_name: Optional[str] = None) -> str:
    """Pivot tables: one line per problem, one column per implementation, and ours over
    the best baseline (plus peak memory where the report asks for it). Failure details
    stay in the JSON; errors are listed below the table."""
    rows = rep["rows"]
    metric = next((r["metric"] for r in rows), "")
    impls = list(OrderedDict.fromkeys(
        r["impl"] for r in rows if not r["status"].startswith(("skipped", "unavailable"))))
    by_key: "OrderedDict[str, dict]" = OrderedDict()
    for r in rows:
        by_key.setdefault(r["key"], {})[r["impl"]] = r
    out = [f"### {rep['suite']} ({metric}, higher is better)", ""]
    tl = threads_line(rep)
    if tl:
        out.append(f"{tl[0].upper()}{tl[1:]}.  ")
    elif rep.get("cpu_fallback"):
        out.append("No thread setting recorded (a run from before mpt-bench set one): these "
                   "CPU ratios are unreliable.  ")
    if any(not _reliable(r) for r in rows if r["status"] == "ok"):
        out.append(f"{UNRELIABLE_NOTE}.  ")
    out += [f"Note: {n}  " for n in rep.get("notes", [])]
    out += _pivot(by_key, impls, "value", ratio=True)
    if rep.get("plot", {}).get("memory_table"):
        out += ["", f"Peak memory of one {rep['suite']} call (GiB, inputs included):", ""]
        out += _pivot(by_key, impls, "peak_gib", ratio=False)
    errors = [r for r in rows if r["status"].startswith(("error", "unsupported"))]
    if errors:
        out += ["", "Errors:", ""]
        out += [f"- {r['key']} / {r['impl']}: {r['status']}" for r in errors[:20]]
    if png_name:
        out += ["", f"![{rep['suite']}]({png_name})"]
    return "\n".join(out) + "\n"
