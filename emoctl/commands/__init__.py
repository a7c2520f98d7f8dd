"""The commands layer: one module per ``emoctl`` command group, each function the typed signature jsonargparse
reads (its docstring is the command's ``--help``).  A command checks the user's values, calls the library and
writes the outputs; it parses nothing itself (:mod:`emoctl.cli` does), and no library module imports it."""
