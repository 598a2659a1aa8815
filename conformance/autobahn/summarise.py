#!/usr/bin/env python3
"""Summarise an Autobahn TestSuite (wstest -m fuzzingclient) report as Markdown.

    python3 conformance/autobahn/summarise.py [REPORT_DIR] [--expect-cases N]

REPORT_DIR defaults to target/autobahn-reports (the spec's outdir). Reads its
index.json and, for the cases listed below, the per-case JSON reports it points to.

Prints, per agent:
  * counts of each `behavior` and each `behaviorClose` per top-level case group;
  * every case whose behavior or behaviorClose is FAILED or UNIMPLEMENTED, with the
    case's description, expectation and outcome;
  * other close-handshake findings (WRONG CODE, UNCLEAN, FAILED BY CLIENT).

Exit status: 1 if any case FAILED (behavior or behaviorClose), or if fewer cases were
reported than --expect-cases (wstest stops early when the server stops accepting
connections); 2 if the report is missing or unreadable; else 0. Stdlib only.
"""

import argparse
import html
import json
import os
import re
import sys

STANDARD = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
PROBLEMS = {"FAILED", "UNIMPLEMENTED"}
# behaviorClose values besides the standard ones (autobahntestsuite/case/case.py)
CLOSE_FINDINGS = {"WRONG CODE", "UNCLEAN", "FAILED BY CLIENT"}

GROUP_NAMES = {
    1: "Framing",
    2: "Pings/Pongs",
    3: "Reserved bits",
    4: "Opcodes",
    5: "Fragmentation",
    6: "UTF-8 handling",
    7: "Close handling",
    8: "Misc",
    9: "Limits/performance",
    10: "Auto-fragmentation",
    12: "permessage-deflate",
    13: "permessage-deflate params",
}


def case_key(case_id):
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))


def cell(text):
    """One line of plain text, safe inside Markdown (tables and bullets)."""
    if text is None:
        return ""
    text = str(text)
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.I)
    text = re.sub(r"<[^>]+>", "", text)
    text = html.unescape(text)
    text = " ".join(text.split())
    return text.replace("|", "\\|")


def load_case_report(report_dir, entry):
    name = entry.get("reportfile")
    if not name:
        return {}
    try:
        with open(os.path.join(report_dir, name), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def counts_table(cases, field):
    groups = {}
    seen = set()
    for case_id, entry in cases.items():
        g = case_key(case_id)[0]
        value = entry.get(field, "?")
        seen.add(value)
        groups.setdefault(g, {}).setdefault(value, 0)
        groups[g][value] += 1
    columns = STANDARD + sorted(seen - set(STANDARD))
    lines = [
        "| Group | Cases | " + " | ".join(columns) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in columns) + " |",
    ]
    totals = {c: 0 for c in columns}
    for g in sorted(groups, key=lambda x: (isinstance(x, str), x)):
        row = groups[g]
        n = sum(row.values())
        name = GROUP_NAMES.get(g, "")
        label = "%s %s" % (g, name) if name else str(g)
        lines.append(
            "| %s | %d | %s |" % (label, n, " | ".join(str(row.get(c, 0)) for c in columns))
        )
        for c in columns:
            totals[c] += row.get(c, 0)
    lines.append(
        "| **Total** | **%d** | %s |"
        % (len(cases), " | ".join("**%d**" % totals[c] for c in columns))
    )
    return lines


def describe(case_id, entry, detail):
    parts = ["behavior %s" % entry.get("behavior"), "close %s" % entry.get("behaviorClose")]
    code = entry.get("remoteCloseCode")
    parts.append("server's close code %s" % (code if code is not None else "none"))
    head = "- **%s** (%s)" % (case_id, ", ".join(parts))
    desc = cell(detail.get("description"))
    if desc:
        head += ": " + desc
    lines = [head]
    if detail.get("expectation"):
        lines.append("  - Expected: " + cell(detail["expectation"]))
    results = []
    if entry.get("behavior") != "OK" and detail.get("result"):
        results.append(cell(detail["result"]))
    if entry.get("behaviorClose") != "OK" and detail.get("resultClose"):
        if cell(detail["resultClose"]) not in results:
            results.append(cell(detail["resultClose"]))
    if results:
        lines.append("  - Got: " + " / ".join(results))
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report_dir", nargs="?", default="target/autobahn-reports")
    ap.add_argument("--expect-cases", type=int, default=None,
                    help="number of cases wstest set out to run (per agent)")
    args = ap.parse_args()

    index_path = os.path.join(args.report_dir, "index.json")
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("summarise: cannot read %s: %s" % (index_path, e), file=sys.stderr)
        return 2
    if not index:
        print("summarise: %s lists no agents (did wstest connect at all?)" % index_path,
              file=sys.stderr)
        return 2

    any_failed = False
    incomplete = False
    out = []
    for agent in sorted(index):
        cases = index[agent]
        ids = sorted(cases, key=case_key)
        failed = [c for c in ids
                  if "FAILED" in (cases[c].get("behavior"), cases[c].get("behaviorClose"))]
        any_failed = any_failed or bool(failed)
        duration_ms = sum(cases[c].get("duration") or 0 for c in ids)

        out.append("## Autobahn TestSuite: %s" % agent)
        out.append("")
        summary = "%d cases, %d FAILED, %.1f s of case time." % (
            len(ids), len(failed), duration_ms / 1000.0)
        if args.expect_cases is not None and len(ids) < args.expect_cases:
            incomplete = True
            summary += (" **Incomplete: wstest set out to run %d cases; %d have no result**"
                        " (the server stopped accepting connections?)."
                        % (args.expect_cases, args.expect_cases - len(ids)))
        out.append(summary)
        out.append("")
        out.append("### behavior (messages and frames)")
        out.append("")
        out.extend(counts_table(cases, "behavior"))
        out.append("")
        out.append("### behaviorClose (closing handshake)")
        out.append("")
        out.extend(counts_table(cases, "behaviorClose"))
        out.append("")

        problems = [c for c in ids
                    if cases[c].get("behavior") in PROBLEMS
                    or cases[c].get("behaviorClose") in PROBLEMS]
        out.append("### FAILED or UNIMPLEMENTED cases (%d)" % len(problems))
        out.append("")
        if problems:
            for c in problems:
                out.extend(describe(c, cases[c], load_case_report(args.report_dir, cases[c])))
        else:
            out.append("None.")
        out.append("")

        others = [c for c in ids
                  if c not in problems and cases[c].get("behaviorClose") in CLOSE_FINDINGS]
        if others:
            out.append("### Other closing-handshake findings (%d)" % len(others))
            out.append("")
            for c in others:
                out.extend(describe(c, cases[c], load_case_report(args.report_dir, cases[c])))
            out.append("")

    out.append("Full report: `%s`" % os.path.normpath(os.path.join(args.report_dir, "index.html")))
    print("\n".join(out))
    return 1 if (any_failed or incomplete) else 0


if __name__ == "__main__":
    sys.exit(main())
