"""The ``icvgw`` command line, one module per command group.

* :mod:`~gateway.cli.main` — the root command (``icvgw``), where every error becomes one
  line and an exit status, and the table of contents that mounts each group;
* :mod:`~gateway.cli.run`, :mod:`~gateway.cli.demo` — the gateway itself, and the demo;
* :mod:`~gateway.cli.policy`, :mod:`~gateway.cli.audit`, :mod:`~gateway.cli.keys`,
  :mod:`~gateway.cli.consent`, :mod:`~gateway.cli.store` (``deadletter``, ``vehicle``) —
  the operator's and the auditor's tools;
* :mod:`~gateway.cli.params` — option values checked where they enter.

The package may import every other part of the gateway; nothing imports it but
``gateway/__main__.py`` (and the ``icvgw`` console script).
"""
