"""Accordion's observability as code: Prometheus rules and alerts, Grafana dashboards.

The queries are written once, here, against the metric contract of `metrics` (what the
router, the workers and the operator export, and the labels Prometheus adds when it scrapes
them). `generate` writes them into the Helm chart (`charts/accordion/files/`), where the
chart's PrometheusRule and dashboard ConfigMaps pick them up; a test regenerates them and fails
when the committed files differ, and other tests parse every expression with a real PromQL
parser, check it against the real `/metrics` output of the components, and run it on a real
Prometheus.
"""
