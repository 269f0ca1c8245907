"""What the tests and the benchmarks share: real servers on free loopback ports, always stopped
(broker, PostgreSQL cluster, notaflow processes in production form, hook receiver, SMTP sink, S3
server), open-loop load, and the documents they send.

Not part of the product: setup.py does not install it and no layer imports it. It is importable
because pytest (rootdir) and `bin/bench` (bench/*.py put the checkout first on sys.path) run
from the repository root. The pytest fixtures themselves stay in tests/conftest.py.
"""
