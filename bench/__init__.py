"""``make bench``: benchmarks of the rotation tool against the local sandboxes (see ``python -m bench --help``).

Benchmarks are not tests: they assert nothing about time. ``make test`` runs each one once at a tiny size
(``--quick``) so they cannot rot; ``make bench`` runs them at full size and writes ``bench/results.md``.
"""
