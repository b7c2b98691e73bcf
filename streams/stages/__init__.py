"""The pipeline's stages, pure: no faust, no network. Each takes its input as plain
arguments and returns its output one way; :mod:`streams.core` composes them in reading order."""
