"""The worker's runtime around the pipeline core (:mod:`streams.core`): delivery and
checkpoints, rebalancing, the timers, the followers, and every reach into faust's or
aiokafka's private internals (:mod:`streams.runtime.internals`, and nowhere else)."""
