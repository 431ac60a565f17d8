"""Rich tables for the cache commands (build summary, inspect report, verify report)."""

from __future__ import annotations

from rich.table import Table

FAILURES_SHOWN = 20


def _mb(n: float | int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.2f} MB"


def build_tables(summary) -> list[Table]:
    """BuildSummary -> [totals table, failures table (when any)]."""
    s = summary.to_dict() if hasattr(summary, "to_dict") else dict(summary)
    t = Table(title=f"latent cache {s['out']}" + ("" if s["complete"] else " (incomplete)"), show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    ratio = f" ({s['bytes_per_row'] / s['fp32_bytes_per_row']:.0%})" if s["fp32_bytes_per_row"] else ""
    t.add_row("clips / rows", f"{s['clips']:,} clips, {s['rows']:,} rows")
    t.add_row("failed rows", f"{s['failed']:,}")
    t.add_row("stores", f"{s['stores_done']} done of {s['stores']} ({s['stores_built']} built now, "
                        f"{s['stores_skipped']} already done)")
    t.add_row("bytes on disk", _mb(s["bytes"]))
    t.add_row("bytes per row", f"{s['bytes_per_row']:,.0f} vs {s['fp32_bytes_per_row']:,} fp32{ratio}")
    t.add_row("fidelity", fidelity_line(s.get("fidelity")).removeprefix("fidelity "))
    t.add_row("wall time", f"{s['wall_s']:.1f} s, of which encoding {s['encode_s']:.1f} s: {s['clips_built']:,} clips "
                           f"encoded now at {s['clips_per_s']:.1f} clips/s (the bar's rate)")
    out = [t]
    if s["failures"]:
        out.append(failures_table(s["failures"]))
    return out


def fidelity_line(f: dict | None) -> str:
    """The stored latents against the fp32 teacher output, in one line (worst row, and mean)."""
    if not f:
        return "fidelity vs fp32: not recorded (stores built before it was measured)"
    return (f"fidelity vs fp32 over {f['rows']:,} rows: cosine >= {f['worst_cosine']:.6f} (mean {f['mean_cosine']:.6f}), "
            f"per-token cosine >= {f['worst_min_token_cosine']:.5f}, relative error <= {f['worst_relative_error']:.3g} "
            f"(mean {f['mean_relative_error']:.3g}), layer-normed target relative error <= "
            f"{f['worst_target_relative_error']:.3g}")


def failures_table(failures: list[dict]) -> Table:
    f = Table(title=f"failed rows ({len(failures)})" + (f", first {FAILURES_SHOWN}" if len(failures) > FAILURES_SHOWN else ""))
    for col in ("store", "row", "key", "view", "reason"):
        f.add_column(col)
    for r in failures[:FAILURES_SHOWN]:
        f.add_row(r["store"], str(r["row"]), r["key"], str(r["view"]), r["reason"])
    return f


def describe_tables(rep: dict) -> list[Table]:
    """describe_cache() report -> [overview, fingerprint, per-store table, failures (when any)]."""
    c, b, fp = rep["counts"], rep["bytes"], rep["fingerprint"]
    over = Table(title=f"{rep['cache']} ({rep['status']})", show_header=False)
    over.add_column("field", style="bold")
    over.add_column("value")
    over.add_row("stores", f"{c['stores_done']} done of {c['stores']}")
    over.add_row("clips / rows", f"{c['clips']:,} clips, {c['rows']:,} rows ({c['views_per_clip']} view(s) per clip)")
    over.add_row("rows ok / failed", f"{c['ok']:,} / {c['failed']:,}")
    over.add_row("bytes on disk", f"{_mb(b['on_disk'])} vs {_mb(b['raw_fp32'])} raw fp32 ({b['ratio_vs_fp32']:.1%})")
    over.add_row("bytes per row", f"{b['bytes_per_row']:,.0f} vs {b['fp32_bytes_per_row']:,} fp32")
    over.add_row("fidelity", fidelity_line(rep.get("fidelity")).removeprefix("fidelity "))
    spec = rep["spec"]
    clip = spec["clip"]
    fpt = Table(title="spec and fingerprint", show_header=False)
    fpt.add_column("field", style="bold")
    fpt.add_column("value")
    step = f"frame_step {clip['frame_step']}" if clip.get("frame_step") else f"fps {clip.get('fps')}"
    rows = [
        ("spec", f"{spec['name']}: {clip['frames']} frames, {step}, {clip['size']} px, crop {clip['crop']}"
                 + (f" scale {clip['scale']} ratio {clip['ratio']}" if clip["crop"] != "center" else "")
                 + f", {spec['views']} view(s), seed {spec['seed']}"),
        ("teacher", f"{fp['teacher_file']} ({fp['teacher_model'] or 'encoder'}, width {fp['teacher_dim']})"),
        ("teacher sha256", str(fp["teacher_sha256"])),
        ("grid / tokens", f"{' x '.join(map(str, fp['grid']))} = {fp['tokens']} tokens, order {fp['token_order']}, "
                          f"final norm {'applied' if fp['final_norm'] else 'not applied'}"),
        ("storage", f"{fp['dtype']} (stored as {fp['stored_dtype']}), codec {fp['codec']} level {fp['level']}"
                    f"{' ' + fp['shuffle'] + ' shuffle' if fp.get('shuffle') and str(fp['codec']).startswith('blosc') else ''}, "
                    f"{fp['rows_per_shard']} rows per Zarr shard"),
        ("student views", fp.get("student_views") or "none (Stage 2 decodes each view from its source video)"),
        ("built with", ", ".join(f"{k} {v}" for k, v in (fp.get("build") or {}).items())),
        ("versions", ", ".join(f"{k} {v}" for k, v in (fp.get("versions") or {}).items() if v)),
        ("cache id", str(rep.get("cache_id"))),
    ]
    for k, v in rows:
        fpt.add_row(k, v)
    st = Table(title="stores")
    st.add_column("store", no_wrap=True)
    for col in ("rows", "ok", "failed", "bytes", "bytes/row", "built in"):
        st.add_column(col, justify="right")
    for s in rep["stores"]:
        if s["done"]:
            st.add_row(s["store"], str(s["rows"]), str(s["ok"]), str(s["failed"]), _mb(s["bytes"]),
                       f"{s['bytes_per_row']:,.0f}" if s["bytes_per_row"] else "-",
                       f"{s['seconds']:.1f} s" if s["seconds"] is not None else "-")
        else:
            st.add_row(s["store"], "[yellow]not built[/]", "", "", "", "", "")
    out = [over, fpt, st]
    if rep.get("ranks"):
        out.append(ranks_table(rep["ranks"]))
    if rep["failures"]:
        out.append(failures_table(rep["failures"]))
    return out


def ranks_table(r: dict) -> Table:
    """latent_ranks() -> RankMe and effective rank, token level and row level."""
    t = Table(title=f"latent ranks ({r['rows']} of {r['ok_rows']} ok rows, {r['tokens']} tokens x {r['dim']} wide)")
    for col in ("level", "RankMe", "effective rank", "of at most"):
        t.add_column(col, justify="right")
    t.add_row("token", f"{r['rankme_token']:.1f}", f"{r['erank_token']:.1f}", str(r["dim"]))
    t.add_row("row (mean token)", f"{r['rankme_row']:.1f}", f"{r['erank_row']:.1f}", str(min(r["dim"], r["rows"])))
    return t
