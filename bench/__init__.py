"""The load benchmark: our gateway against the seed's design, on one machine, in one run.

``python -m bench --quick`` (``make bench``) or ``--full`` (``make bench-full``); see
bench/README.md.
"""
