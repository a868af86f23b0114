"""Merges the GPU check's per-stage JSON files and prints readable tables (stdlib only).

Importing this module does not import jax (the package __init__ does, unless this file is
run by path), so the summary still works when a stage died on a broken jax install.
"""
from __future__ import annotations

import glob
import json
import os

STAGE_ORDER = ("env", "correctness", "decode", "ragged", "autotune", "confirm", "engine")


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"unreadable": f"{type(e).__name__}: {e}"}


def _fmt(x, spec=".1f"):
    if x is None:
        return "-"
    if isinstance(x, (int, float)):
        return format(x, spec)
    return str(x)[:40]


def _table(title, headers, rows):
    lines = [f"\n== {title} =="]
    if not rows:
        return "\n".join([*lines, "  (no rows)"])
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    lines.append("  " + "  ".join(str(h).rjust(w) for h, w in zip(headers, widths)))
    for r in rows:
        lines.append("  " + "  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    return "\n".join(lines)


def summarize(out_dir: str, extra: dict | None = None) -> tuple[dict, str]:
    """Returns (merged results, text report) and writes <out_dir>/results.json."""
    merged = {"stages": {}}
    if extra:
        merged.update(extra)
    for path in sorted(glob.glob(os.path.join(out_dir, "*.json"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if name == "results":
            continue
        merged["stages"][name] = _load(path)
    st = merged["stages"]
    out = []
    env = st.get("env", {}).get("env", {})
    out.append(f"device: {env.get('device_kind')} ({env.get('core_count')} SMs)  jax "
               f"{env.get('jax')}  jaxlib {env.get('jaxlib')}  triton {env.get('triton')}  "
               f"python {env.get('python')}")
    for name in STAGE_ORDER:
        if name in st and isinstance(st[name], dict) and "stage" in st[name]:
            s = st[name]
            out.append(f"stage {name:12s} finished={s.get('finished')} "
                       f"elapsed={s.get('elapsed_s')}s items={len(s.get('items', []))} "
                       f"errors={len(s.get('errors', []))} skipped={len(s.get('skipped', []))}")
        elif name in st:
            out.append(f"stage {name:12s} (own format; see results.json)")
    for rc in (st.get("run") or {}).get("stage_rc", []):
        out.append(f"  process {rc.get('stage')}: rc={rc.get('rc')} wall={rc.get('wall_s')}s"
                   + ("  TIMED OUT" if rc.get("rc") in (124, 137) else ""))
    c = st.get("correctness", {})
    out.append(_table("correctness on device (max |kernel - reference|)",
                      ["case", "ok", "max_err", "tol", "zeros_ok", "s"],
                      [[i["case"], i["ok"], _fmt(i["max_abs_err"], ".2e"), i["tolerance"],
                        i["zero_rows_ok"], i["seconds"]] for i in c.get("items", [])]))
    d = st.get("decode", {})
    bw = d.get("copy_bandwidth", {}).get("gbps")
    out.append(f"\ncopy bandwidth (y = x + 1, read + write): {_fmt(bw, '.0f')} GB/s")
    out.append("v1 = the first version's loop (page ids loaded in the same iteration), timed "
               "in the same run; x_v1 = v1 time / kernel time")
    out.append(_table(
        "decode, Llama-3-8B bf16 page 16 (kernel vs XLA reference)",
        ["batch", "ctx", "splits", "kernel_us", "v1_us", "x_v1", "ref_us", "speedup", "GB/s",
         "%copy", "L2?"],
        [[i["batch"], i["ctx"], i.get("num_splits"), _fmt(i["kernel_us"]),
          _fmt(i.get("legacy_us")), _fmt(i.get("speedup_vs_legacy"), ".2f"),
          _fmt(i.get("ref_us")) if "ref_us" in i else str(i.get("reference", "-"))[:20],
          _fmt(i.get("speedup_vs_ref"), ".2f"), _fmt(i["kernel_gbps"], ".0f"),
          _fmt(100 * i["frac_copy_bw"], ".0f"), "yes" if i.get("l2_resident_possible") else ""]
         for i in d.get("items", [])]))
    r = st.get("ragged", {})
    rows = []
    for i in r.get("items", []):
        if "frac_roofline" in i:
            rows.append([i["case"][:34], _fmt(i["kernel_us"]), _fmt(i.get("legacy_us")),
                         _fmt(i.get("speedup_vs_legacy"), ".2f"), _fmt(i.get("ref_us")),
                         _fmt(i.get("speedup_vs_ref"), ".2f"),
                         _fmt(i["roofline_s"] * 1e6), _fmt(100 * i["frac_roofline"], ".0f")])
    out.append(_table("ragged mixed batch (512-token chunk + 63 decodes)",
                      ["case", "kernel_us", "v1_us", "x_v1", "ref_us", "speedup", "roofline_us",
                       "%roofline"],
                      rows))
    for i in r.get("items", []):
        if "glue_us" in i:
            out.append(f"  {i['case']}: {i['glue_us']:.1f} us")
        if "layer_us" in i:
            out.append(f"  {i['case']}: {i['layer_us']:.1f} us per layer, "
                       f"{100 * i['layer_frac_roofline']:.0f}% of roofline")
        if "ragged_over_decode" in i:
            out.append(f"  {i['case']}: decode {i['decode_us']:.1f} us, ragged "
                       f"{i['ragged_us']:.1f} us (x{i['ragged_over_decode']:.2f})")
    a = st.get("autotune", {})
    out.append(_table("autotune (ragged, then decode)", ["case", "us", "%copy/%roof"],
                      [[i["case"][:60], _fmt(i["us"]),
                        _fmt(100 * i.get("frac_copy_bw", i.get("frac_roofline", 0)), ".0f")]
                       for i in a.get("items", [])]))
    for k, v in (a.get("best_decode") or {}).items():
        out.append(f"  best decode {k}: {v}")
    if a.get("best_ragged"):
        out.append(f"  best ragged: {a['best_ragged']}")
    c = st.get("confirm", {})
    out.append(_table("confirm (best autotune configs and the default, same process)",
                      ["case", "us", "%copy/%roof"],
                      [[i["case"][:64], _fmt(i.get("us", i.get("layer_us"))),
                        _fmt(100 * i.get("frac_copy_bw", i.get("frac_roofline",
                                                             i.get("layer_frac_roofline", 0))),
                             ".0f")]
                       for i in c.get("items", [])]))
    errs = [(n, e) for n, s in st.items() if isinstance(s, dict)
            and isinstance(s.get("errors"), list) for e in s["errors"] if isinstance(e, dict)]
    if errs:
        out.append("\n== errors ==")
        for n, e in errs:
            out.append(f"  [{n}] {e.get('what')}: {str(e.get('error'))[:300]}")
    text = "\n".join(out)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(merged, f, indent=1, default=str)
    return merged, text
