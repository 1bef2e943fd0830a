"""The benchmark's results as Markdown tables, and the bench-<time>.json / .md files."""

from __future__ import annotations

from .._io import utc_stamp


def results_markdown(res: dict) -> str:
    """The benchmark's tables as Markdown (what benchmarks/RESULTS.md shows)."""
    m, lines = res["machine"], []
    add = lines.append
    cond = res.get("conditions", {})
    add(f"Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, torch {m['torch']} "
        f"({m['torch_threads']} threads, CPU kernels: {m['torch_cpu_capability']}), "
        f"AVX-512: {'yes' if m['avx512f'] else 'no'}, bf16 units: "
        f"{'yes' if m['bf16_units'] else 'no'}"
        + (f", CUDA: {m['cuda']}" if m.get("cuda") else "") + ".")
    add(f"Allocator fix: {m['allocator']['reason'] if m['allocator']['applied'] else 'not applied (' + m['allocator']['reason'] + ')'}.")
    add(f"Conditions: {cond.get('wall_s')} s run; load average {cond.get('loadavg_start')} at the "
        f"start, {cond.get('loadavg_end')} at the end; other processes kept on average "
        f"{cond.get('others_cores_busy')} cores busy while it ran.")
    pk = res["peak"]
    add("")
    add(f"Peak matmul: fp32 {pk['fp32']['gflops']} GFLOP/s (n={pk['fp32']['n']}), "
        f"bf16 {pk['bf16']['gflops']} GFLOP/s (n={pk['bf16']['n']}). bf16 conv probe: "
        f"{res['bf16_probe'].get('bf16_ms')} ms vs fp32 {res['bf16_probe'].get('fp32_ms')} ms "
        f"({'fast' if res['bf16_probe']['bf16_fast'] else 'no fast bf16 kernels: bf16 modes skipped'}).")
    add("")
    add("### Forward only (images/s, best of runs; trunk with BatchNorm folded)")
    add("")
    batches = res["options"]["batches"] if not res["options"]["quick"] else None
    bs_cols = None
    for b in res["backbones"].values():
        for v in b["modes"].values():
            if "batches" in v:
                bs_cols = list(v["batches"])
                break
        if bs_cols:
            break
    bs_cols = bs_cols or [str(x) for x in (batches or [])]
    add("| backbone | GFLOP/img | mode | " + " | ".join(f"b{b}" for b in bs_cols)
        + " | % of peak |")
    add("|---|---|---|" + "---|" * len(bs_cols) + "---|")
    for name, b in res["backbones"].items():
        for mode, v in b["modes"].items():
            if "skipped" in v:
                add(f"| {name} | {b['gflops_per_image']} | {mode} | "
                    + " | ".join("-" for _ in bs_cols) + f" | skipped: {v['skipped']} |")
                continue
            cells = [str(v["batches"].get(x, {}).get("img_s", "-")) for x in bs_cols]
            if mode == "compile":
                k = next(iter(v["batches"]))
                cells = [f"{v['batches'][k]['img_s']} (b{k}, {v['compile_s']} s compile)"] + \
                    ["" for _ in bs_cols[1:]]
            frac = v.get("fraction_of_peak")
            add(f"| {name} | {b['gflops_per_image']} | {mode} | " + " | ".join(cells)
                + f" | {'' if frac is None else f'{100 * frac:.0f}%'} |")
    add("")
    add("### Defaults chosen (CPU) and how close they are to the best forward-only mode")
    add("")
    add("| backbone | precision | channels_last | conv engine | batch | default img/s | best mode "
        "| best img/s | default / best | BN not folded img/s |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for name, b in res["backbones"].items():
        d = b["default"]
        add(f"| {name} | {d['precision']} | {d['channels_last']} | {d.get('conv_engine')} | "
            f"{d['batch_size']} | "
            f"{d['img_s']} | {d['best_mode']} | {d['best_img_s']} | "
            f"{100 * d['fraction_of_best']:.0f}% | {b.get('unfolded_default', {}).get('img_s', '-')} |")
    add("")
    add("### Decode only (to 224x224 uint8)")
    add("")
    add("| input | decoder | ms/image, 1 thread | images/s, 1 thread | images/s, all threads |")
    add("|---|---|---|---|---|")
    for kind, decs in res["decode"].items():
        inp = res["inputs"][kind]
        for name, v in decs.items():
            if name == "gpu_decode_jpeg":
                add(f"| {kind} {inp['size']} ({inp['kb_mean']} KB) | decode_jpeg(cuda), batch "
                    f"{v['batch']} | | | {v['img_s']} |")
                continue
            multi = next((v[k] for k in v if k.startswith("img_s_") and k != "img_s_1thread"), "")
            add(f"| {kind} {inp['size']} ({inp['kb_mean']} KB) | {name} | "
                f"{v['ms_per_image_1thread']} | {v['img_s_1thread']} | {multi} |")
    add("")
    add("### End to end from JPEG files (hash + decode + resize + forward + cache write), defaults")
    add("")
    add("| backbone | images | end-to-end img/s | ideal img/s | % of ideal | naive img/s | speed-up |")
    add("|---|---|---|---|---|---|---|")
    for name, b in res["backbones"].items():
        e = b["end_to_end"]
        nv = b.get("naive", {}).get("img_s", "-")
        sp = b.get("speedup_vs_naive")
        add(f"| {name} | {e['images']} {res['inputs']['frames']['size']} | {e['img_s']} | "
            f"{e['ideal_img_s']} | {100 * e['fraction_of_ideal']:.0f}% | {nv} | "
            f"{'-' if sp is None else f'{sp}x'} |")
    add("")
    add("ideal = 1 / (decode ms on one thread / usable CPUs + forward ms at the default settings): "
        "both stages spread perfectly over all cores, no overhead. naive = Pillow open + convert, "
        "torchvision Resize/ToTensor/Normalize, one image at a time through the unfolded fp32 NCHW "
        "trunk, no allocator fix (in its own process).")
    strat = {n: b["strategies"] for n, b in res["backbones"].items() if "strategies" in b}
    if strat:
        add("")
        add("### Sharing the cores between decode and forward (end to end, images/s)")
        add("")
        add("| backbone | strategy | img/s |")
        add("|---|---|---|")
        for n, s in strat.items():
            for label, v in s.items():
                add(f"| {n} | {label} | {v['img_s']} |")
    alloc = {n: b["allocator"] for n, b in res["backbones"].items() if "allocator" in b}
    if alloc:
        add("")
        add("### glibc allocator fix (forward only, default mode, images/s)")
        add("")
        add("| backbone | batch | without fix | with fix | gain |")
        add("|---|---|---|---|---|")
        for n, a in alloc.items():
            for b, v in a.items():
                add(f"| {n} | {b} | {v['off_img_s']} | {v['on_img_s']} | {v['gain']}x |")
    if "memory" in res:
        mem = res["memory"]
        add("")
        add(f"### Memory (peak RSS, extract_files with {mem['backbone']}, one process per count)")
        add("")
        add("| images | peak RSS MB | RSS before extraction MB | features MB | seconds |")
        add("|---|---|---|---|---|")
        for c, v in mem["runs"].items():
            add(f"| {c} | {v['peak_rss_mb']} | {v['peak_rss_before_mb']} | {v['features_mb']} | "
                f"{v['seconds']} |")
        add(f"\nPeak ratio largest / smallest: {mem['peak_ratio']}.")
    cl = res.get("cache_load")
    if cl:
        add("")
        add(f"Feature cache: opening and reading {cl['images']} x {cl['dim']} features took "
            f"{cl['load_get_s']} s from {cl['shards']} shards, {cl['compacted_load_get_s']} s "
            f"after compact().")
    return "\n".join(lines) + "\n"


def write_results(res: dict, out_dir) -> tuple:
    """Write ``bench-<time>.json`` and ``.md`` (and ``latest.*`` copies) into ``out_dir``."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = utc_stamp()
    js, md = out / f"bench-{stamp}.json", out / f"bench-{stamp}.md"
    text = json.dumps(res, indent=2, default=str) + "\n"
    table = results_markdown(res)
    for p, t in ((js, text), (md, table), (out / "latest.json", text), (out / "latest.md", table)):
        p.write_text(t)
    return js, md
