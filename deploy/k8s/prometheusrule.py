#!/usr/bin/env python3
"""Write deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/rules.yml.

The rules are kept once, as a plain Prometheus rule file (deploy/prometheus/rules.yml, usable
with `rule_files:` and `promtool check rules`). The Prometheus operator wants them inside a
PrometheusRule object instead, and kustomize cannot embed a file's YAML into a field, so this
script wraps the file (indented under `spec:`, comments kept) and the tests check that the two
agree (tests/integration/test_deploy.py).

    python3 deploy/k8s/prometheusrule.py           # rewrite the PrometheusRule
    python3 deploy/k8s/prometheusrule.py --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RULES = HERE.parent / "prometheus" / "rules.yml"
TARGET = HERE / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/rules.yml by deploy/k8s/prometheusrule.py; do not edit here.
# Your Prometheus must select it: kube-prometheus-stack selects rules by its Helm release label
# unless ruleSelectorNilUsesHelmValues=false; add that label in an overlay if needed.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: roomcast
  labels:
    app.kubernetes.io/name: roomcast
    app.kubernetes.io/part-of: roomcast
spec:
"""


def render(rules_text: str) -> str:
    """The PrometheusRule manifest whose `spec` is the rule file `rules_text` (top key `groups`)."""
    lines = rules_text.splitlines()
    while lines and (not lines[0].strip() or lines[0].strip() == "---"):
        lines.pop(0)
    if not any(line.startswith("groups:") for line in lines):
        raise ValueError(f"{RULES} has no top-level `groups:`")
    body = "\n".join(f"  {line}" if line.strip() else "" for line in lines)
    return HEADER + body.rstrip() + "\n"


def main(argv: list[str]) -> int:
    if not RULES.is_file():
        print(f"prometheusrule: {RULES} is missing", file=sys.stderr)
        return 1
    wanted = render(RULES.read_text(encoding="utf-8"))
    if "--check" in argv:
        if not TARGET.is_file() or TARGET.read_text(encoding="utf-8") != wanted:
            print(f"prometheusrule: {TARGET} is out of date; run python3 deploy/k8s/prometheusrule.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
