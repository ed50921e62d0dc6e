"""One region's training: the regional ServerApp, its run records, progress and reports."""
