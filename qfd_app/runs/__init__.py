"""A run's bookkeeping: its directory and checkpoints, the ledger of energy and bytes,
the plots and comparisons, launching Flower on loopback, and the `qfd` command line."""
