"""What each figure of the auditor's views means: the CLI prints it under its tables, the web
view and the report beside theirs."""

LEGEND: dict[str, str] = {
    "verdict": "accepted: signature, envelope and arrays passed every check; rejected: one "
    "failed (reason names it), never aggregated",
    "device": "verified device id (key fingerprint); '(claimed)': named by a refused "
    "envelope, not verified",
    "fate": "what the robust aggregator did with an accepted update: kept, trimmed, clipped, "
    "down-weighted, dropped",
    "score": "the rule's own measure of the update: centered clipping, distance to the "
    "center; Krum/Multi-Krum/Bulyan, Krum score (lower is more central); Zeno, descent on "
    "the server's validation data (higher is better); empty: the rule gives none",
    "weight": "share in the aggregate (0: did not count); signed example count capped at "
    "max-examples and 2x the round's median",
    "digest": "SHA-256 of the update's canonical array bytes (as its signed envelope states)",
    "model": "SHA-256 of the round's model in the blob store (round.closed)",
    "val-acc": "the round's model's accuracy on the region server's validation split",
    "val-loss": "the round's model's loss on the region server's validation split",
    "choice": "the aggregator's choice for the round, as its note states it",
    "config": "SHA-256 of the run's canonical configuration (what the operator signed)",
}
