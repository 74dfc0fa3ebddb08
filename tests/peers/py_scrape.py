"""Parses an OpenMetrics text scrape (stdin) with the Prometheus project's
own Python client, as a scraper would, and prints every sample as one JSON
line: {"name": ..., "labels": {...}, "value": ...}. A scrape that does not
parse fails here."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

text = sys.stdin.read()
for family in text_string_to_metric_families(text):
    for sample in family.samples:
        print(json.dumps({"name": sample.name, "labels": sample.labels, "value": sample.value}))
