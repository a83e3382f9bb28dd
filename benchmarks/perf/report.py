"""The run's result as markdown: one table per part, from the result JSON (also results
written by earlier versions of the benchmark, as the committed ones are)."""

from __future__ import annotations

import functools
import statistics
from typing import Any


def _median(rounds: list[dict[str, Any]], part: str, key: str) -> float:
    """The median over the rounds of `round[part][key]`."""
    return statistics.median(r[part][key] for r in rounds)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### {result['model']} ({result['device']}, {result['machine']['cores']} cores, "
        f"{result['machine']['cpu']}, torch {result['machine']['torch']}, "
        f"{result.get('torch_threads', result['machine']['torch_threads'])} torch thread(s))",
        "",
        f"Command: `{result['command']}`; {result['date']}; load average at start "
        f"{result['machine']['load_average_at_start']}.",
        "",
    ]
    c = result.get("classify")
    if c:
        lines += classify_markdown(c) if "pipeline_b1" in c["rounds"][0] else old_classify(c)
    t = result.get("training")
    if t:
        e = t["engine"]
        lines += [
            "**Training** (4-shot class, the engine's default settings; POST -> ready on a "
            "warm server with the embedded worker)",
            "",
            "| | POST -> ready s | steps run | engine step ms |",
            "|---|---:|---:|---:|",
            f"| short text context (default) | {t['short']['seconds_all']:.2f} | "
            f"{t['short']['steps_run'][0]} | {e['step_ms_short']:.1f} |",
            f"| full 77-token context | {t['full']['seconds_all']:.2f} | "
            f"{t['full']['steps_run'][0]} | {e['step_ms_full']:.1f} |",
            "",
            f"Per-step speed-up of the short context: {e['step_speedup_short']:.1f}x. Batched "
            f"training, 4 classes x {e['steps']} fixed steps: one by one "
            f"{e['four_alone_s']:.2f} s, "
            f"in one batch {e['four_batched_s']:.2f} s (**{e['batched_speedup']:.1f}x**). Through "
            f"the service, 4 classes posted together: all ready in "
            f"{t['four_posted']['seconds_all']:.2f} s (batch sizes seen: "
            f"{t['four_posted']['batch_sizes']}).",
            "",
        ]
    s = result.get("scale")
    if s:
        lines += scale_markdown(s, result["classifier_dtype"])
    f = result.get("freshness")
    if f:
        lines += freshness_markdown(f)
    tenants = result.get("tenants")
    if tenants:
        lines += tenants_markdown(tenants)
    v = result.get("versus")
    if v:
        lines += versus_markdown(v)
    peer = result.get("peer")
    if peer:
        lines += peer_markdown(peer)
    if result.get("note"):
        lines += [result["note"], ""]
    return "\n".join(lines)


def versus_markdown(v: dict[str, Any]) -> list[str]:
    rounds = v["rounds"]

    med = functools.partial(_median, rounds)
    sent = (
        "/v1/embeddings with an OpenAI-shaped body (the image a data URI)"
        if v.get("request") == "embeddings"
        else "raw-body /classify"
    )
    return [
        f"**Versus** (this checkout against `{v['baseline']}` at {v['baseline_commit']}; {sent}, "
        f"lean client; c=1 alternating request by request, {v['pairs_c1']} pairs; "
        f"c=16 in turn, the order flipping; medians of {len(rounds)} rounds)",
        "",
        "| | baseline | this checkout |",
        "|---|---:|---:|",
        f"| c=1 p50 ms | {med('c1_before', 'p50_ms'):.3f} | {med('c1_after', 'p50_ms'):.3f} |",
        f"| c=16 images/s | {med('c16_before', 'throughput_per_s'):.0f} | "
        f"{med('c16_after', 'throughput_per_s'):.0f} |",
        "",
        f"c=1 p50 difference **{v['c1_p50_diff_ms'] * 1000:+.0f} µs** (median per-pair ratio "
        f"x{v['c1_pair_ratio_median']:.3f}); c=16 throughput **x{v['throughput_ratio_c16']:.2f}**. "
        "Per round (µs / pair ratio / c=16): "
        + ", ".join(
            f"{r['c1_p50_diff_ms'] * 1000:+.0f} / x{r['c1_pair_ratio_median']:.3f} / "
            f"x{r['throughput_ratio_c16']:.2f}"
            for r in rounds
        )
        + ".",
        "",
    ]


def peer_markdown(p: dict[str, Any]) -> list[str]:
    if not p["available"]:
        return [f"**Peer**: not measured: {p['reason']}.", ""]
    rounds = p["rounds"]

    med = functools.partial(_median, rounds)

    lines = [
        f"**Peer, side by side** ({p['peer']}; the same random-weight CLIP shapes, the same "
        "256x256 JPEG, one lean client for every server; medians of "
        f"{len(rounds)} interleaved rounds, the server order rotating)",
        "",
        "| path | c=1 p50 ms | c=1 p99 ms | c=16 images/s |",
        "|---|---:|---:|---:|",
    ]
    for part, label in (
        ("peer_embeddings", "peer `POST /embeddings` (image data URI)"),
        ("ours_embeddings", "ours `POST /v1/embeddings` (the same OpenAI-shaped body)"),
        ("ours_classify", "ours `POST /v1/classify` (raw JPEG body, 10 classes)"),
    ):
        lines.append(
            f"| {label} | {med(part + '_c1', 'p50_ms'):.2f} | {med(part + '_c1', 'p99_ms'):.2f} "
            f"| {med(part + '_c16', 'throughput_per_s'):.0f} |"
        )
    lines += [
        f"| our bare encode (batch 1 p50; batch 32 images/s) | {med('bare_b1', 'p50_ms'):.2f} | "
        f"| {med('bare_b32', 'throughput_per_s'):.0f} |",
        "",
        "Throughput at c=16 against the peer's (median of per-round ratios): our embeddings "
        f"**x{p['ours_embeddings_vs_peer_c16']:.2f}**, our classify "
        f"**x{p['ours_classify_vs_peer_c16']:.2f}**; p50 at c=1 against the peer's: "
        f"x{p['ours_embeddings_vs_peer_c1_p50']:.2f} and x{p['ours_classify_vs_peer_c1_p50']:.2f}. "
        "Per round (c=16, embeddings / classify vs peer): "
        + ", ".join(
            f"x{r['ours_embeddings_vs_peer_c16']:.2f} / x{r['ours_classify_vs_peer_c16']:.2f}"
            for r in rounds
        )
        + ".",
        "",
    ]
    return lines


def classify_markdown(c: dict[str, Any]) -> list[str]:
    rounds = c["rounds"]

    med = functools.partial(_median, rounds)

    lines = [
        "**Classify** (256x256 JPEG; bare encode = preprocess + encode in-process of an image "
        "decoded beforehand; bare pipeline = decode + preprocess + encode from the JPEG's "
        "bytes; service = POST /v1/classify over HTTP to a uvicorn subprocess, 10 classes, "
        "from the lean client unless marked httpx; medians of "
        f"{len(rounds)} interleaved rounds)",
        "",
        "| path | p50 ms | p99 ms | images/s |",
        "|---|---:|---:|---:|",
    ]
    for part, label in (
        ("bare_b1", "bare encode, batch 1"),
        ("bare_b1_full_size", "bare encode of the full-size image (the earlier floor), batch 1"),
        ("pipeline_b1", "bare pipeline (decode included), batch 1"),
        ("service_c1", "service, concurrency 1, raw body (image/jpeg)"),
        ("service_c1_multipart", "service, concurrency 1, multipart"),
        ("service_c1_httpx", "service, concurrency 1, multipart, httpx client"),
        ("bare_b32", "bare encode, batch 32 (per batch)"),
        ("bare_b32_full_size", "bare encode of the full-size image, batch 32 (per batch)"),
        ("pipeline_b32", "bare pipeline, batch 32 (per batch)"),
        ("service_c16", "service, concurrency 16, raw body"),
        ("service_c16_multipart", "service, concurrency 16, multipart"),
        ("service_c16_httpx", "service, concurrency 16, multipart, httpx client"),
    ):
        lines.append(
            f"| {label} | {med(part, 'p50_ms'):.2f} | {med(part, 'p99_ms'):.2f} | "
            f"{med(part, 'throughput_per_s'):.1f} |"
        )
    lines += [
        "",
        f"Server overhead at c=1 (service raw p50 - bare encode p50): "
        f"**{c['overhead_c1_ms']:.2f} ms** ({c['overhead_c1'] * 100:+.0f}%; target <= 1.0 ms); "
        f"over the bare pipeline: {c['overhead_c1_vs_pipeline_ms']:.2f} ms. Throughput at "
        f"c=16 (raw) vs bare encode batch 32: **{c['throughput_ratio_c16'] * 100:.0f}%** "
        f"(target >= 50%); vs the bare pipeline batch 32: "
        f"{c['throughput_ratio_c16_vs_pipeline'] * 100:.0f}%. Against the earlier floor "
        f"(open_clip's preprocess of the full-size image): overhead "
        f"{c['overhead_c1_ms_full_size']:.2f} ms, throughput "
        f"{c['throughput_ratio_c16_full_size'] * 100:.0f}%. JPEG decode alone (reduced to "
        f"the model's decode side): {c['decode_ms']:.2f} ms. Per round (overhead ms / "
        "c=16 ratio to bare encode / to bare pipeline): "
        + ", ".join(
            f"{r['overhead_c1_ms']:.2f} / {r['throughput_ratio_c16'] * 100:.0f}% / "
            f"{r['throughput_ratio_c16_vs_pipeline'] * 100:.0f}%"
            for r in rounds
        )
        + ".",
        "",
    ]
    return lines


def old_classify(c: dict[str, Any]) -> list[str]:
    """Results from before the bare pipeline and the lean client, as they were printed."""
    rounds = c["rounds"]

    med = functools.partial(_median, rounds)

    lines = [
        "**Classify** (256x256 JPEG; bare = preprocess + encode in-process; service = "
        "POST /v1/classify over HTTP to a uvicorn subprocess, 10 classes; medians of "
        f"{len(rounds)} interleaved rounds)",
        "",
        "| path | p50 ms | p99 ms | images/s |",
        "|---|---:|---:|---:|",
    ]
    for part, label in (
        ("bare_b1", "bare model, batch 1"),
        ("service_c1", "service, concurrency 1"),
        ("bare_b32", "bare model, batch 32 (per batch)"),
        ("service_c16", "service, concurrency 16"),
    ):
        lines.append(
            f"| {label} | {med(part, 'p50_ms'):.2f} | {med(part, 'p99_ms'):.2f} | "
            f"{med(part, 'throughput_per_s'):.1f} |"
        )
    lines += [
        "",
        f"Service overhead at c=1 (p50 vs bare batch 1): **{c['overhead_c1'] * 100:+.1f}%** "
        f"(target <= +15%). Throughput at c=16 vs bare batch 32: "
        f"**{c['throughput_ratio_c16'] * 100:.0f}%** (target >= 85%). JPEG decode alone: "
        f"{c['decode_ms']:.2f} ms. Per round (overhead c=1 / throughput ratio c=16): "
        + ", ".join(
            f"{r['overhead_c1'] * 100:+.1f}% / {r['throughput_ratio_c16'] * 100:.0f}%"
            for r in rounds
        )
        + ".",
        "",
    ]
    return lines


def scale_markdown(s: dict[str, Any], classifier_dtype: str) -> list[str]:
    """The scale table; results from before the reference server render as they used to."""
    rows = s["rows"]
    side_by_side = "reference" in s and all("reference_c1" in row for row in rows)
    if side_by_side:
        first = s["reference"]["classes"]
        ref_rss = [row["reference_rss_mb"] for row in rows]
        lines = [
            f"**Scale** (/classify at concurrency 1, top_k 5; class matrix {classifier_dtype}). "
            f"Side by side: a reference server holds {first:,} classes for the whole part, and "
            f"for each size one client alternates requests between it and the sized server "
            f"({rows[0]['pairs']} pairs per size). **ratio = p50 / reference p50 from the same "
            f"window** (the headline); the median of the per-pair ratios is shown next to it. "
            f"The first row compares two servers holding equal classes: its distance from 1.00 "
            f"is the noise floor.",
            "",
            f"| ready classes | p50 ms | p99 ms | reference ({first:,} classes) p50 ms, same "
            f"window | reference p99 ms | ratio | median per-pair ratio | API RSS MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            c1, ref = row["c1"], row["reference_c1"]
            lines.append(
                f"| {row['classes']:,} | {c1['p50_ms']:.2f} | {c1['p99_ms']:.2f} | "
                f"{ref['p50_ms']:.2f} | {ref['p99_ms']:.2f} | **{row['ratio_to_first']:.2f}** | "
                f"{row['pair_ratio_median']:.2f} | {row['rss_mb']:.0f} |"
            )
        lines += [
            "",
            f"Reference server RSS over the part: {min(ref_rss):.0f}-{max(ref_rss):.0f} MB.",
        ]
    else:
        # Written before the reference server existed: sizes were measured one after another,
        # so the ratio is across windows (kept as it was printed then).
        lines = [
            f"**Scale** (/classify at concurrency 1, top_k 5; class matrix {classifier_dtype})",
            "",
            "| ready classes | p50 ms | p99 ms | ratio to 10 | API RSS MB |",
            "|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row['classes']:,} | {row['c1']['p50_ms']:.2f} | {row['c1']['p99_ms']:.2f} | "
                f"{row['ratio_to_first']:.2f} | {row['rss_mb']:.0f} |"
            )
    lines.append("")
    for key, what in (
        ("during_reloads", "a class became ready (appended to the matrix)"),
        ("during_rebuilds", "a class was deleted (dropped in place via the removal log)"),
    ):
        d = s.get(key)
        if d is None:
            continue
        if d.get("kind") == "rebuild":  # results from before the removal log
            what = "a class was deleted (full rebuild)"
        if "kind" not in d:  # results from before appends existed: every bump rebuilt
            what = "the matrix was rebuilt (a generation bump)"
        line = (
            f"While {what} every {d['reload_every_s']} s at {d['classes']:,} classes "
            f"({d['reloads']} times): p50 {d['c1']['p50_ms']:.2f} ms, "
            f"p99 {d['c1']['p99_ms']:.2f} ms"
        )
        ref = d.get("reference_c1")
        if ref is not None:
            line += (
                f"; reference in the same window: p50 {ref['p50_ms']:.2f} ms, "
                f"p99 {ref['p99_ms']:.2f} ms (p50 ratio "
                f"{d['c1']['p50_ms'] / ref['p50_ms']:.2f}, p99 ratio "
                f"{d['c1']['p99_ms'] / ref['p99_ms']:.2f})"
            )
        lines.append(line + ".")
    lines.append("")
    return lines


def freshness_markdown(f: dict[str, Any]) -> list[str]:
    rounds = f["rounds"]

    med = functools.partial(_median, rounds)

    return [
        f"**Freshness** (/classify reads the class generation from the database before scoring, "
        f"so a class any process answered `ready` for is scored; {f['database']}, "
        f"{f['classes']} classes). Two servers on one database, with the check (default) and "
        f"with LITEEMBED_CLASSIFY_CHECKS_GENERATION=false, side by side; medians of "
        f"{len(rounds)} interleaved rounds.",
        "",
        "| | with check | without | ratio |",
        "|---|---:|---:|---:|",
        f"| concurrency 1, p50 ms (alternating, {f['pairs_c1']} pairs) | "
        f"{med('c1_on', 'p50_ms'):.2f} | {med('c1_off', 'p50_ms'):.2f} | "
        f"**{f['ratio_c1']:.3f}** (median per-pair "
        f"{statistics.median(r['c1_pair_ratio_median'] for r in rounds):.3f}) |",
        f"| concurrency 16, images/s ({f['requests_c16']} requests each) | "
        f"{med('c16_on', 'throughput_per_s'):.1f} | {med('c16_off', 'throughput_per_s'):.1f} | "
        f"**{f['throughput_ratio_c16']:.3f}** |",
        f"| concurrency 16, p50 ms | {med('c16_on', 'p50_ms'):.2f} | "
        f"{med('c16_off', 'p50_ms'):.2f} | |",
        "",
        "Per round (c=1 p50 ratio / c=16 throughput ratio): "
        + ", ".join(f"{r['ratio_c1']:.3f} / {r['throughput_ratio_c16']:.3f}" for r in rounds)
        + ".",
        "",
    ]


def tenants_markdown(t: dict[str, Any]) -> list[str]:
    rounds = t["rounds"]

    def med(side: str) -> float:
        return statistics.median(r[side]["p50_ms"] for r in rounds)

    return [
        f"**Tenants** (/classify within one tenant, {t['classes']:,} classes in one matrix): "
        f"split over {t['tenants']:,} tenants against all in one tenant, side by side "
        f"(alternating, {t['pairs']} pairs per round); medians of {len(rounds)} rounds.",
        "",
        "| | one tenant | split | ratio |",
        "|---|---:|---:|---:|",
        f"| concurrency 1, p50 ms | {med('one'):.2f} | {med('split'):.2f} | **{t['ratio']:.3f}** "
        f"(median per-pair {statistics.median(r['pair_ratio_median'] for r in rounds):.3f}) |",
        "",
        "Per round: " + ", ".join(f"{r['ratio']:.3f}" for r in rounds) + ".",
        "",
    ]
