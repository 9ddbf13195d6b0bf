"""The evaluation report (run_evaluate's dict) as a markdown table."""

from __future__ import annotations


def to_markdown(report: dict) -> str:
    rows = [k for k in report if isinstance(report[k], dict) and "R@1" in report[k]]
    lines = [
        f"# Retrieval on {report['split'] or 'all'} split: {report['items']} items, {report['queries']} queries",
        "",
        f"model `{report['model']}` ({report['family']})",
        "",
        "| task | R@1 | R@5 | R@10 |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {k} | {report[k]['R@1']:.3f} | {report[k]['R@5']:.3f} | {report[k]['R@10']:.3f} |" for k in rows]
    if report.get("undecodable_images"):
        lines += ["", f"{report['undecodable_images']} items had an image that did not decode (zero vectors)."]
    return "\n".join(lines) + "\n"
