"""Kafka itself: the local broker (:mod:`streams.kafka.local`), topic administration,
client security (TLS, SCRAM) and the ACL model."""
