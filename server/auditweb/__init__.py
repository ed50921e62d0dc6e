"""The auditor's read-only web view and report (``fedgate audit serve``, ``audit report``).

``sources.py`` finds a home's audit chains (each region's database, the coordinator's) and
their public keys; ``snapshot.py`` verifies a chain with ``server/audit/verify.py`` and folds
its events into what the pages show (``views.py``'s runs, rounds and fates, plus devices,
artifacts, gate decisions and global versions), cached until the chain moves; ``pages.py``
turns a snapshot into each page's plain data (the JSON twin of every page); ``charts.py``
draws charts, sparklines and the lineage graph as SVG text; ``app.py`` is the FastAPI app
(GET/HEAD only, path checks, optional token); ``report.py`` writes the self-contained
HTML report and its PDF. Nothing here writes a database: every one is opened read-only.
"""
