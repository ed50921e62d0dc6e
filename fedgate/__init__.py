"""fedgate: federated learning across compliance regions, built on Flower."""

__version__ = "0.1.0"
