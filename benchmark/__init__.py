"""The project's benchmark: the shipped app measured from outside, as a person uses it.

It lives outside the `generator` app on purpose: a deployed app carries no benchmark, and the
benchmark reaches the app only the ways a person does (the form over HTTP, the CLI) while the web
and worker processes run as the Procfile starts them. Run it with `scripts/benchmark` or
`python -m benchmark`.
"""


class BenchmarkError(Exception):
    """The benchmark could not measure something (not: a target was missed)."""
