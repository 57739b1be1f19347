"""The ``licsearch`` command line: one module per command group, collected by :mod:`.main`."""
