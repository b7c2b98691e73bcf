"""Where operators look: alert episodes in Alertmanager (and through it Grafana), and
their acknowledgement.

- :mod:`streams.operators.episodes`: pure bookkeeping, alert events in, Alertmanager
  alerts out (no network, no clock of its own);
- :mod:`streams.operators.acks`: pure acknowledgement records and silences;
- :mod:`streams.operators.alertmanager`: a small client of Alertmanager's API v2;
- :mod:`streams.operators.forwarder`: ``citystreams alerts forward``, the loop between
  Kafka and Alertmanager, and the ``ack``/``unack`` commands.
"""
