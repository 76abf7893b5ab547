"""/metrics through the ingress: every replica's liteinfer metrics, each sample labelled with
the replica it comes from, one family per metric name (as Prometheus' text format wants), and
the ingress's own counters. Per replica, not summed: `sum without (replica) (...)` in a query
gives the total of a counter, and a replica that restarted starts its counters from zero as
any restarted process does."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self):
        return iter(self._families)


def merge(texts: dict[str, str], extra: str = "", label: str = "replica") -> str:
    """One exposition of all `texts` ({replica id: its /metrics text}), `label` added to each
    sample, then `extra` (the ingress's own, unlabelled)."""
    merged: dict[str, Metric] = {}
    for replica, text in sorted(texts.items()):
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:  # a replica's text that does not parse: left out, the others still shown
            continue
        for fam in families:
            into = merged.get(fam.name)
            if into is None:
                into = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for s in fam.samples:
                into.samples.append(s._replace(labels={label: replica, **s.labels}))
    body = generate_latest(_Families(merged.values())).decode()
    return body + extra
