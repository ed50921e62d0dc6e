"""The global coordinator: verifies regional artifacts (``candidates``, the one place that
decides trust), merges them (``merge``), writes signed global versions atomically
(``versions``) in its own database and audit chain (``store``); ``service`` runs it."""
