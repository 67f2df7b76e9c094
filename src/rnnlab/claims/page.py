"""claims.json and claims.md from the measured levels, and the README's table from claims.md.

    from rnnlab.claims.page import evaluate_claims, write_page, readme_table, update_readme
    results = evaluate_claims(cfg, runs)            # per claim: levels, comparisons, verdict
    write_page(cfg, results, ran)                   # <out_dir>/claims.{json,md}
    update_readme(Path("README.md"), Path("docs/claims.md"))   # the table between the markers

claims.md holds its summary table between TABLE_BEGIN and TABLE_END; the README's section holds
the same lines between README_BEGIN and README_END, so the two can be checked to agree.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rnnlab.claims.measures import Measures
from rnnlab.claims.stats import claim_verdict, compare, interval, t975

TABLE_BEGIN, TABLE_END = "<!-- claims-table:begin -->", "<!-- claims-table:end -->"
README_BEGIN, README_END = "<!-- claims:begin (scripts/reproduce.py --readme) -->", \
    "<!-- claims:end -->"
METHOD = ("95% intervals are Student-t over seeds: mean ± t(0.975, n-1)·sd/√n. A comparison "
          "a vs b is paired by seed: the t interval of the per-seed differences a − b (of "
          "log values where the scale is log, shown as the ratio a/b). Verdict: supported when "
          "the interval lies on the predicted side of 0 (for \"~\", inside ±margin), "
          "contradicted when it lies wholly on the other side (outside ±margin), inconclusive "
          "otherwise (at this budget); a claim is supported when all its predicted comparisons "
          "are, contradicted when any is. Seeds that agree exactly give a zero-width interval; "
          "deterministic measures (n-gram counts) have zero width by construction.")


def cpu_name() -> str:
    """The CPU as lscpu names it: model name, family and model, and the cores."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    import os

    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model "
            f"{info.get('model', '?')}), {os.cpu_count()} cores")


def evaluate_claims(cfg: DictConfig, runs: dict[str, dict[int, dict]]) -> list[dict]:
    seeds = list(cfg.budget.seeds)
    measures = Measures(cfg, Path(cfg.out_dir), runs)
    results = []
    for c in cfg.claims:
        levels = {}
        for name, spec in c.levels.items():
            values = measures.values(OmegaConf.to_container(spec), seeds)
            levels[name] = {"values": values, **interval(values)}
        comparisons = []
        for cmp in c.compare:
            got = compare(levels[cmp.a]["values"], levels[cmp.b]["values"], cmp.expect,
                          cmp.get("scale", "linear"), float(cmp.get("margin", 0.0)))
            comparisons.append({"a": cmp.a, "b": cmp.b, **got})
        results.append({"id": c.id, "section": str(c.section), "claim": c.claim,
                        "measurement": c.measurement, "unit": c.get("unit", ""),
                        "needs": list(c.needs), "figure_kind": c.get("figure"),
                        "levels": levels, "comparisons": comparisons,
                        "verdict": claim_verdict([x["verdict"] for x in comparisons])})
    chosen = getattr(measures, "chosen", {})
    for r in results:  # say which n-gram orders val chose, where they were used
        r["chosen"] = {k: v for k, v in chosen.items() if "ngram" in r["needs"]}
    return results


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # "|V|" inside a markdown table cell


def _g(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4g}"


def level_text(level: dict) -> str:
    if level["lo"] is None:
        return f"{_g(level['mean'])} (n={level['n']})"
    return f"{_g(level['mean'])} [{_g(level['lo'])}, {_g(level['hi'])}]"


def comparison_text(c: dict) -> str:
    """`a vs b: ratio 0.97 [0.95, 0.99]` (log scale) or `difference ...` (linear)."""
    if c["mean"] is None:
        return f"{c['a']} vs {c['b']}: missing values"
    ratio = c["scale"] == "log"
    f = math.exp if ratio else (lambda x: x)
    iv = "" if c["lo"] is None else f" [{_g(f(c['lo']))}, {_g(f(c['hi']))}]"
    what = f"{c['a']}/{c['b']}" if ratio else f"{c['a']} − {c['b']}"
    sign = {"<": "predicted < 1" if ratio else "predicted < 0",
            ">": "predicted > 1" if ratio else "predicted > 0",
            "~": f"predicted within ±{c['margin']:g}" + (" (log)" if ratio else ""),
            "info": "no prediction"}[c["expect"]]
    return f"{what} = {_g(f(c['mean']))}{iv} ({sign})"


def summary_table(results: list[dict]) -> list[str]:
    """One row per claim: its predicted comparisons with their intervals, and the verdict (the
    levels' own means and intervals are in each claim's section)."""
    lines = ["| § | claim | the chapter says | paired comparison over seeds, mean [95% CI] | "
             "verdict |", "|---|---|---|---|---|"]
    for r in results:
        comps = "; ".join(comparison_text(c) for c in r["comparisons"] if c["expect"] != "info")
        lines.append(f"| {r['section']} | `{r['id']}` | {_cell(r['claim'])} | {_cell(comps)} | "
                     f"**{r['verdict']}** |")
    return lines


def _header(cfg: DictConfig, ran: dict) -> dict:
    return {"date": datetime.date.today().isoformat(), "cpu": cpu_name(),
            "budget": cfg.budget.name, "seeds": list(cfg.budget.seeds),
            "wall_time_s": ran["seconds"].get("total"),
            "jobs_wall_time_s": ran["seconds"].get("jobs"), "ran": ran,
            "train_overrides": list(cfg.budget.train), "interval_method": METHOD,
            "t975": t975(max(len(cfg.budget.seeds) - 1, 1))}


def write_page(cfg: DictConfig, results: list[dict], ran: dict) -> Path:
    """claims.json and claims.md, linking each claim's figures/<id>.png (claims.figures)."""
    out = Path(cfg.out_dir)
    for r in results:
        r.setdefault("figure", f"figures/{r['id']}.png")
    header = _header(cfg, ran)
    doc = {**header, "claims": results}
    tmp = out / "claims.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=float))
    tmp.replace(out / "claims.json")
    (out / "claims.md").write_text(markdown(doc))
    return out / "claims.json"


def markdown(doc: dict) -> str:
    minutes = (doc["wall_time_s"] or 0) / 60
    lines = [f"# Chapter 8's claims, measured ({doc['budget']} budget)", "",
             f"Generated by `python scripts/reproduce.py budget={doc['budget']}` on {doc['date']}, "
             f"on {doc['cpu']}; seeds {doc['seeds']}; the runs' own wall time (training, "
             f"testing and forecasting jobs, summed) {(doc['jobs_wall_time_s'] or 0) / 60:.1f} "
             f"min, this invocation's {minutes:.1f} min. Every training job: "
             f"`{' '.join(doc['train_overrides'])}` on top of its variant "
             f"(conf/claims/variant/). {doc['interval_method']}", "",
             TABLE_BEGIN, *summary_table(doc["claims"]), TABLE_END, ""]
    for r in doc["claims"]:
        lines += [f"## {r['section']} `{r['id']}`: {r['verdict']}", "", f"**Claim.** {r['claim']}",
                  "", f"**Measured.** {r['measurement']}" +
                  (f" Chosen on val: {r['chosen']}." if r.get("chosen") else ""), "",
                  f"| level ({_cell(r['unit'])}) | per seed | mean | 95% CI |", "|---|---|---|---|"]
        for name, lv in r["levels"].items():
            per = ", ".join(_g(v) for v in lv["values"])
            ci = "-" if lv["lo"] is None else f"[{_g(lv['lo'])}, {_g(lv['hi'])}]"
            lines.append(f"| {_cell(name)} | {per} | {_g(lv['mean'])} | {ci} |")
        lines += ["", "| comparison | verdict |", "|---|---|"]
        lines += [f"| {_cell(comparison_text(c))} | {c['verdict'] or '-'} |"
                  for c in r["comparisons"]]
        lines += ["", f"![{r['id']}]({r['figure']})", ""]
    return "\n".join(lines)


def readme_table(claims_md: str) -> str:
    """The summary table of a claims.md, with its generated-by line (what the README shows)."""
    first = next(line for line in claims_md.splitlines() if line.startswith("Generated by"))
    when = first.split(";")[0].replace("Generated by", "Measured with")
    body = claims_md.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip("\n")
    return (f"{when} (full page with figures: [docs/claims.md](docs/claims.md)).\n\n{body}\n")


def publish(out_dir: Path, docs: Path) -> Path:
    """Copy a run's claims.md to docs/claims.md and its figures to docs/img/claims/."""
    import shutil

    img = docs / "img" / "claims"
    img.mkdir(parents=True, exist_ok=True)
    for png in sorted((out_dir / "figures").glob("*.png")):
        shutil.copyfile(png, img / png.name)
    text = (out_dir / "claims.md").read_text().replace("](figures/", "](img/claims/")
    (docs / "claims.md").write_text(text)
    return docs / "claims.md"


def update_readme(readme: Path, claims_md: Path) -> None:
    """Replace what lies between the README's markers by claims_md's table."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_BEGIN} ... {README_END} markers")
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(f"{head}{README_BEGIN}\n{readme_table(claims_md.read_text())}"
                      f"{README_END}{tail}")
